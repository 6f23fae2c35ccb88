"""The ``fer-edge`` command line: thin Typer commands over library functions.

Each command lives in its own module and registers itself on ``app``. Library code
raises :class:`fer_edge.errors.FerEdgeError`; :func:`main` prints it to stderr and
exits with status 1 (2 for an :class:`~fer_edge.errors.OptionError`, a usage error).
"""
from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="fer-edge",
    help="Facial-expression recognition from training to the edge.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _print_version(value: bool) -> None:
    if value:
        from fer_edge import __version__

        from fer_edge.cli.common import exit_on_broken_pipe

        with exit_on_broken_pipe():
            typer.echo(f"fer-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print fer-edge's version and exit."),
) -> None:
    """Facial-expression recognition from training to the edge."""


#: Command modules, imported for their ``@app.command`` side effects.
COMMAND_MODULES = ("models", "train", "soup", "eval", "export", "bench", "predict")

for _name in COMMAND_MODULES:
    try:
        importlib.import_module(f"fer_edge.cli.{_name}")
    except ModuleNotFoundError as _e:  # a command module not written yet
        if _e.name != f"fer_edge.cli.{_name}":
            raise


def main(argv: list[str] | None = None) -> None:
    from fer_edge.console import closed_stdout, set_help_width
    from fer_edge.errors import FerEdgeError
    from fer_edge.utils import command_environment

    _closed_std_streams_to_devnull()
    command_environment()  # ONNX Runtime's telemetry off, before any command imports onnxruntime
    set_help_width()
    try:
        app(args=argv, standalone_mode=True)
    except FerEdgeError as e:
        from fer_edge.errors import OptionError

        typer.echo(f"error: {e}", err=True)
        sys.exit(2 if isinstance(e, OptionError) else 1)
    except SystemExit as e:
        if e.code == 130 and _typer_caught_an_interrupt(e):
            typer.echo("interrupted: fer-edge stopped before the command ran; nothing was done", err=True)
        if e.code == 1 and closed_stdout(e):  # `fer-edge --help | head`: rich and click exit 1 for it
            from fer_edge.cli.common import BROKEN_PIPE_EXIT, _stdout_to_devnull

            _stdout_to_devnull()
            sys.exit(BROKEN_PIPE_EXIT)
        raise


def _closed_std_streams_to_devnull() -> None:
    """A stdout or stderr closed before fer-edge started (``fer-edge models --json >&-``; Python makes it None, and
    the first ``.isatty()`` or write raised AttributeError): /dev/null in its place, so that the command runs,
    writing nothing there. Its file descriptor is taken too, or the next file opened (a report) would get it and
    whatever writes to stdout (a library, a child process) would write into that file."""
    import os

    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)  # open after all (Python had no stream for it): leave it alone
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
            setattr(sys, name, open(fd, "w", closefd=False))
        else:
            setattr(sys, name, open(os.devnull, "w"))


def _typer_caught_an_interrupt(e: SystemExit) -> bool:
    """Whether ``e`` is Typer's own exit for a Ctrl-C (or SIGTERM) that came while it read the command line, before
    any command's handling (a command's own interrupt exits are raised ``from None``): Typer ends it silently."""
    inner = e.__context__
    return isinstance(inner, typer.Exit) and isinstance(inner.__cause__, KeyboardInterrupt)
