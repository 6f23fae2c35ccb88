"""Helpers shared by the CLI commands."""
from __future__ import annotations

import contextlib
import functools
import sys
from enum import Enum
from pathlib import Path

import typer

# (BROKEN_PIPE_EXIT and _stdout_to_devnull: shared with the benchmark scripts, imported from here by the commands)
from fer_edge.console import BROKEN_PIPE_EXIT, WideConsole
from fer_edge.console import stdout_to_devnull as _stdout_to_devnull


class _Console(WideConsole):
    """The commands' Console: 200 columns off a terminal (:class:`~fer_edge.console.WideConsole`), and a closed
    stdout ends the command quietly."""

    def on_broken_pipe(self) -> None:
        """stdout closed early (``| head``): quiet, exit status 141 as everywhere in fer-edge (rich: 1)."""
        self.quiet = True
        raise BrokenPipeError


console = _Console()
err_console = _Console(stderr=True)


class Device(str, Enum):
    """The torch devices of ``train`` and ``eval`` (``--device``); auto: cuda, else mps, else cpu."""
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


def handle_errors(fn):
    """Turn a FerEdgeError, or an OSError from writing outputs, into a message on stderr and exit code 1 (2 for
    an OptionError, a usage error; also under CliRunner)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from fer_edge.errors import FerEdgeError, OptionError

        try:
            return fn(*args, **kwargs)
        except OptionError as e:  # a value wrong on its own (or with the others): a usage error
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except FerEdgeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (Typer would exit silently)
            if not getattr(e, "fer_edge_reported", False):  # (the trainer says what it kept itself)
                typer.echo("interrupted: the command stopped before it finished", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:  # stdout closed early (`fer-edge ... | head`): not an error of the command
            _stdout_to_devnull()
            raise typer.Exit(BROKEN_PIPE_EXIT) from None
        except OSError as e:  # the file system said no: a path taken by a file, no permission, disk full
            where = f"{e.filename}: " if e.filename else ""
            typer.echo(f"error: {where}{e.strerror or e}", err=True)
            raise typer.Exit(1) from None

    return wrapper


@contextlib.contextmanager
def exit_on_broken_pipe():
    """Output outside a command (``--version``): a closed stdout ends fer-edge quietly with
    :data:`BROKEN_PIPE_EXIT`, as :func:`handle_errors` does for the commands."""
    try:
        yield
    except BrokenPipeError:
        _stdout_to_devnull()
        raise typer.Exit(BROKEN_PIPE_EXIT) from None


def path_value(value) -> Path | None:
    """A Typer ``parser`` for path options: refuses an empty value.

    Typer turns ``--out ""`` (a script's unset variable) into ``Path(".")``, so the outputs landed in the current
    folder; with this parser the option says it is empty instead. Use it as
    ``typer.Option(..., parser=path_value, metavar="PATH")``.
    """
    if value is None or isinstance(value, Path):  # a default
        return value
    if not str(value).strip():
        raise typer.BadParameter("is empty: give a path (an unset variable in a script?)")
    return Path(value)


def split_value(value) -> str | None:
    """A Typer ``parser`` for split options (``--split``, ``--val-split``, ...): refuses an empty value (a script's
    unset variable) as a usage error, as :func:`path_value` does for paths; leaving the option out means the
    default split."""
    if value is None:
        return None
    if not str(value).strip():
        raise typer.BadParameter("is empty: name a split, or leave the option out for the default")
    return str(value)


def device_value(value) -> str | None:
    """A Typer ``parser`` for a free-text ``--device``: refuses an empty value as a usage error, as
    :func:`split_value` does; leaving the option out means the runtime's default device."""
    if value is None:
        return None
    if not str(value).strip():
        raise typer.BadParameter("is empty: name a device, or leave the option out for the runtime's default")
    return str(value)


def model_value(value) -> str | None:
    """A Typer ``parser`` for options naming a checkpoint or model (a path or a shipped name): refuses an empty
    value as a usage error, as :func:`path_value` does (``Path("")`` is the current folder); leaving the option
    out means its default."""
    if value is None:
        return None
    if not str(value).strip():
        raise typer.BadParameter("is empty: give a checkpoint path or shipped model name (an unset variable in a "
                                 "script?)")
    return str(value)


def existing_path_value(value) -> Path | None:
    """:func:`path_value` for inputs: the path must also exist (as ``exists=True`` checks)."""
    path = path_value(value)
    if path is not None and not path.exists():
        raise typer.BadParameter(f"Path '{value}' does not exist.")
    return path


def parse_csv_option(value: str | list[str] | None, valid: list[str], what: str,
                     option: str | None = None) -> list[str]:
    """Split ``a,b`` (or repeated options) and reject values not in ``valid`` (no fuzzy matching).

    Empty items (``a,,b``) are dropped. With ``option`` (``"--target"``), an option given with nothing in it
    (``--target ""``: a script's unset variable), even beside another (``--target onnx --target ""``), is refused,
    naming the option and the valid values, rather than taken as not given (as ``bench --devices`` does).
    """
    from fer_edge.errors import OptionError

    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    empty = [item for item in items if not str(item).replace(",", "").strip()]
    if option is not None and empty:
        raise OptionError(f"{option} was given an empty value ({', '.join(repr(str(i)) for i in empty)}); "
                          f"valid: {', '.join(valid)} (leave {option} out for the default)")
    out: list[str] = []
    for item in items:
        for v in str(item).split(","):
            v = v.strip()
            if not v:
                continue
            if v not in valid:
                raise OptionError(f"{option + ': ' if option else ''}unknown {what} {v!r}; valid: {', '.join(valid)}")
            if v not in out:
                out.append(v)
    if option is not None and not out:
        raise OptionError(f"{option} was given an empty value ({', '.join(repr(str(i)) for i in items)}); "
                          f"valid: {', '.join(valid)} (leave {option} out for the default)")
    return out


def is_tty() -> bool:
    return sys.stderr.isatty()


def gate_judged(thresholds_source: dict | None, judged: set[str]) -> dict | None:
    """``thresholds_source`` with a shipped weight's gate cut to the ``judged`` precisions (those of artifacts the
    parity gate ran on); None when the weight's gate judged none of them (its line would claim a gate that did not
    apply), the source as it is when no weight's gate applies."""
    source = thresholds_source or {}
    weight = source.get("weight")
    if not weight:
        return source
    gate = {p: lim for p, lim in (weight.get("gate") or {}).items() if p in judged}
    return {**source, "weight": {**weight, "gate": gate}} if gate else None


def weight_gate_line(thresholds_source: dict | None, where: str) -> str | None:
    """One line saying a shipped weight's own parity gate applied (None when it did not); ``where``: the file
    whose ``thresholds_source`` holds the reason.

    Overrides (``thresholds_source["overrides"]``, from ``--min-agreement`` etc.) of the precisions the weight's
    gate names are shown too, with the thresholds that were in effect."""
    weight = (thresholds_source or {}).get("weight")
    if not weight:
        return None

    def fmt(table: dict) -> str:
        return "; ".join(f"{prec} " + ", ".join(f"{k} {'none' if v is None else v}" for k, v in lim.items())
                         for prec, lim in table.items())

    gate = weight["gate"]
    line = f"parity gate: {weight['name']}'s own ({fmt(gate)}) over the defaults"
    overrides: dict[str, dict] = {}
    for name, per in ((thresholds_source or {}).get("overrides") or {}).items():
        for prec, value in (per or {}).items():
            if prec in gate:
                overrides.setdefault(prec, {})[name] = value
    if overrides:
        merged = {prec: {**lim, **overrides.get(prec, {})} for prec, lim in gate.items()}
        line += f", then your overrides ({fmt(overrides)}): in effect {fmt(merged)}"
    return f"{line}; why: thresholds_source in {where}"


def parse_batches(value: str) -> list[int]:
    """Sorted distinct batch sizes from "1,32" (``--batch``); anything else is an :class:`OptionError` (a usage
    error, exit 2)."""
    from fer_edge.errors import OptionError

    try:
        out = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise OptionError(f"--batch takes comma-separated positive integers, got {value!r}") from None
    if not out or out[0] < 1:
        raise OptionError(f"--batch takes comma-separated positive integers, got {value!r}")
    return out
