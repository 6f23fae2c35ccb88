"""The rich Console fer-edge prints tables with: wide off a terminal; and what fer-edge does when stdout goes."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping

from rich.console import Console, ConsoleDimensions

#: Exit status when stdout's reader went away: 128 + SIGPIPE, as a tool that signal stopped.
BROKEN_PIPE_EXIT = 141


def valid_size(value: str | None) -> bool:
    """Whether ``value`` (a COLUMNS or LINES setting) is a size: a whole number of at least 1. Docker sets
    ``COLUMNS=0`` in some setups, and rich laid everything out in 0 columns (nothing printed, errors included);
    such a value, or one that is no number, is taken as not set."""
    return value is not None and value.isascii() and value.isdigit() and int(value) > 0  # ("²".isdigit() too)


class SizedEnviron(Mapping):
    """``environ`` (live: a later change shows) without a COLUMNS or LINES that is no size (:func:`valid_size`)."""

    HIDDEN_UNLESS_SIZE = ("COLUMNS", "LINES")

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ

    def _shown(self, key: str) -> bool:
        return key not in self.HIDDEN_UNLESS_SIZE or valid_size(self.environ.get(key))

    def __getitem__(self, key: str) -> str:
        if not self._shown(key):
            raise KeyError(key)
        return self.environ[key]

    def __iter__(self) -> Iterator[str]:
        return (key for key in list(self.environ) if self._shown(key))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class WideConsole(Console):
    """A rich Console that, writing to a pipe or a file with no COLUMNS set, lays out for 200 columns.

    Rich assumes 80 columns off a terminal and squeezes wide tables (``fer-edge predict``'s seven probability
    columns, the bench table, the benchmark scripts' tables) until columns are cut off, so ``... | tee log`` lost
    data. A COLUMNS of 0 or one that is no number counts as not set (:class:`SizedEnviron`).
    """

    OFF_TERMINAL_WIDTH = 200

    def __init__(self, *args, _environ: Mapping[str, str] | None = None, **kwargs):
        super().__init__(*args, _environ=SizedEnviron(os.environ if _environ is None else _environ), **kwargs)

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in self._environ:
            return ConsoleDimensions(max(dims.width, self.OFF_TERMINAL_WIDTH), dims.height)
        return dims


def stdout_to_devnull() -> None:
    """Point stdout at /dev/null so that flushing it at exit does not fail again on the closed pipe (Python's
    documented recipe for SIGPIPE); a stdout without a file descriptor (a test runner's) is left alone."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def closed_stdout(e: SystemExit) -> bool:
    """Whether ``e`` is rich's or click's exit (status 1) for a stdout closed early (``--help | head``)."""
    import errno

    inner = e.__context__
    return isinstance(inner, BrokenPipeError) or (isinstance(inner, OSError) and inner.errno == errno.EPIPE)


#: Columns of ``--help`` off a terminal (no COLUMNS or TERMINAL_WIDTH set): every option name whole.
HELP_WIDTH_OFF_TERMINAL = 120


def set_help_width() -> None:
    """Typer's help and usage boxes (the ``fer-edge`` command's and the scripts'): a width where COLUMNS gives none.
    Piped or saved (no COLUMNS or TERMINAL_WIDTH), Rich's 80 columns cut the long option names (--label-smoothi...):
    :data:`HELP_WIDTH_OFF_TERMINAL`. A COLUMNS of 0 (Docker's, in some setups) or no number counts as not set, as for
    fer-edge's tables (:func:`valid_size`): Rich laid the help, and a usage error, out in 0 columns (nothing
    printed)."""
    import shutil

    import typer.rich_utils

    if os.environ.get("TERMINAL_WIDTH") or valid_size(os.environ.get("COLUMNS")):
        return  # the user's width
    if sys.stdout is None or not sys.stdout.isatty():
        typer.rich_utils.MAX_WIDTH = HELP_WIDTH_OFF_TERMINAL
    elif "COLUMNS" in os.environ:  # the terminal's own width (shutil skips a COLUMNS that is 0 or no number)
        typer.rich_utils.MAX_WIDTH = shutil.get_terminal_size().columns


def run_script(main) -> int:
    """The exit status of a benchmark script's entry point ``main`` (returning one, or exiting, as a Typer app or
    argparse's ``--help`` does), run as the ``fer-edge`` command runs its commands: a stdout whose reader went away
    (``| head``) ends it quietly with :data:`BROKEN_PIPE_EXIT`, not rich's or click's status 1 (a failed parity
    gate's), nor a traceback or "Exception ignored" and status 120 from the last flush at exit. Typer's help and
    usage boxes get the command's width (:func:`set_help_width`) while ``main`` runs: a process-wide setting, put
    back after, so that a program running a script in-process keeps its own."""
    import typer.rich_utils

    width = typer.rich_utils.MAX_WIDTH
    set_help_width()
    try:
        try:
            code = main()
        except SystemExit as e:
            if e.code == 1 and closed_stdout(e):  # rich's or click's exit for the closed pipe
                raise BrokenPipeError from None
            code = e.code  # (sys.exit takes it as it is: None, a number or a message)
        if sys.stdout is not None:  # the lines still buffered (print's): flushed at exit, they failed there
            sys.stdout.flush()
    except BrokenPipeError:
        stdout_to_devnull()
        return BROKEN_PIPE_EXIT
    finally:
        typer.rich_utils.MAX_WIDTH = width
    return code
