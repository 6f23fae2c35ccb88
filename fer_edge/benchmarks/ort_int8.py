"""ONNX Runtime INT8 with and without ``session.x64quantprecision``: speed and answers, side by side.

ONNX Runtime's U8S8 INT8 kernels saturate on x86 CPUs without VNNI; the session option switches them to exact
U8U8 kernels. This measures what the option costs on this CPU and whether the fast kernels give other logits
here, which is how ``exact_int8="auto"`` (the runtime's default: the option only on x86 CPUs without VNNI)
was chosen. Each INT8 ``.onnx`` artifact (a file, or every ``*_int8.onnx`` in a directory) is opened twice,
exact and fast; rounds are interleaved (exact, fast, exact, ...) and each round times ``--seconds`` of calls
per batch size. Medians of the rounds' p50s are compared. With ``--data``, both sessions also run the split's
images (``--split``, ``--n-images``: which; refused without ``--data``) and the table gives the largest logit
difference and the top-1 agreement between them; without it, 256 seeded random inputs.

    python -m fer_edge.benchmarks.ort_int8 exports/nano exports/small \\
        --data ../shared/data/fer2013/fer2013.csv.gz --split PublicTest --threads 1
"""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import typer

from fer_edge.cli.common import existing_path_value, split_value

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

MODES = {"exact": True, "fast": False}
#: The longest ``--seconds`` taken: an hour of timed calls per mode, batch and round.
MAX_SECONDS = 3600.0


def check_seconds(seconds: float) -> float:
    """Refuse a ``--seconds`` that is not a finite number of at most :data:`MAX_SECONDS` (inf, nan, 1e300): a usage
    error (:class:`~fer_edge.errors.OptionError`, exit 2)."""
    import math

    from fer_edge.errors import OptionError

    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise OptionError(f"--seconds {seconds:g}: give a finite number of seconds, at most {MAX_SECONDS:g} "
                           "(it is timed per mode, batch size and round)")
    return seconds


def check_options(seconds: float, batch: str, data, split: str | None, n_images: int | None) -> list[int]:
    """The ``--batch`` sizes, once every option wrong on its own is refused in one usage error
    (:class:`~fer_edge.errors.OptionError`, exit 2): an unbounded ``--seconds``, a bad ``--batch``, and ``--split``
    or ``--n-images`` without ``--data`` (they choose its images: without it they would do nothing)."""
    from fer_edge.cli.common import parse_batches
    from fer_edge.errors import OptionError

    problems, batches = [], []
    try:
        check_seconds(seconds)
    except OptionError as e:
        problems.append(str(e))
    try:
        batches = parse_batches(batch)
    except OptionError as e:
        problems.append(str(e))
    given = [o for o, v in (("--split", split), ("--n-images", n_images)) if v is not None]
    if data is None and given:
        one = len(given) == 1
        problems.append(f"{' and '.join(given)} choose{'s' if one else ''} the images of --data, and no --data was "
                        f"given: pass --data, or leave {'it' if one else 'them'} out (the answers are then compared "
                        "on seeded random inputs)")
    if problems:
        raise OptionError("; ".join(problems))
    return batches


def dedupe(arts: list) -> tuple[list, list[str]]:
    """The artifacts with each file once (by resolved path, first naming kept), and a note per repeat."""
    seen: dict[Path, Path] = {}
    out, notes = [], []
    for a in arts:
        key = Path(a.path).resolve()
        if key in seen:
            notes.append(f"{a.path} is {seen[key]} again (named twice, e.g. by its folder and by its path): "
                         "measured once")
            continue
        seen[key] = Path(a.path)
        out.append(a)
    return out, notes


def display_names(paths: list[Path]) -> list[str]:
    """Each path's file name, with as many of its folders as it takes to tell apart files of the same name."""
    parts = [Path(p).resolve().parts for p in paths]
    names = []
    for i, ps in enumerate(parts):
        k = 1
        while k < len(ps) and any(j != i and q[-k:] == ps[-k:] for j, q in enumerate(parts)):
            k += 1
        names.append(str(Path(*ps[-k:])) if k > 1 else Path(paths[i]).name)
    return names


def int8_artifacts(paths: list[Path]) -> list:
    """The ONNX INT8 artifacts named (:func:`fer_edge.benchmarks.artifacts.collect_artifacts`: files as given,
    directories through their manifest or file names); a named file of another kind is refused."""
    from fer_edge.benchmarks.artifacts import collect_artifacts
    from fer_edge.errors import FerEdgeError

    out = []
    for p in paths:
        found = [] if p.is_dir() and not any(p.iterdir()) else collect_artifacts([p])
        int8 = [a for a in found if a.runtime == "onnxruntime" and a.precision == "int8"]
        if p.is_dir() and not int8:
            raise FerEdgeError(f"{p}: no *_int8.onnx in this directory (export one with fer-edge export "
                               "--target onnx --precision int8)")
        if not p.is_dir() and not int8:
            a = found[0]
            raise FerEdgeError(f"{p}: its manifest or file name says precision {a.precision} for runtime "
                               f"{a.runtime}; the session entry changes only ONNX Runtime's INT8 kernels: give "
                               "*_int8.onnx files")
        out += int8
    return out


def artifact_normalization(art, rt):
    """The input normalisation of ``art``: its manifest's, else its embedded metadata's, else a clear error."""
    from fer_edge.benchmarks.artifacts import metadata_normalization
    from fer_edge.errors import ArtifactError

    norm = art.normalization or metadata_normalization(rt.metadata())
    if norm is None:
        raise ArtifactError(f"{art.path}: no fer-edge normalization metadata; export it with fer-edge export")
    return norm


def compare_answers(sessions: dict, x: np.ndarray, batch: int = 64) -> dict:
    """Largest |logit difference| and top-1 agreement of the fast session against the exact one on ``x``."""
    from fer_edge.benchmarks.bench import run_in_chunks

    exact = run_in_chunks(sessions["exact"].run, x, batch)
    fast = run_in_chunks(sessions["fast"].run, x, batch)
    return {"max_abs_diff": float(np.abs(exact - fast).max()),
            "agreement": float((exact.argmax(1) == fast.argmax(1)).mean()), "n": len(x)}


def time_modes(sessions: dict, x: np.ndarray, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Per mode, each round's p50 in ms (rounds interleaved across the modes)."""
    from fer_edge.benchmarks.bench import timed_turn

    p50s: dict[str, list[float]] = {m: [] for m in sessions}
    for _ in range(rounds):
        for mode, rt in sessions.items():
            for _ in range(3):
                rt.run(x)
            buf: list[int] = []
            timed_turn(rt, x, buf, None, int(seconds * 1e9))
            p50s[mode].append(float(np.median(buf)) / 1e6)
    return p50s


@cli.command()
def main(
    # parser: an empty path (a script's unset variable) is a usage error, not the current folder
    artifacts: list[Path] = typer.Argument(..., parser=existing_path_value, metavar="ARTIFACT",
                                           help="INT8 .onnx files, or export directories."),
    data: Path | None = typer.Option(None, parser=existing_path_value, metavar="PATH", help="FER2013 CSV or image "
                                     "folder: compare the two sessions' answers on its images (else on seeded random "
                                     "inputs)."),
    split: str | None = typer.Option(None, parser=split_value, help="Split of --data (default PublicTest / val); "
                                     "only with --data."),
    n_images: int | None = typer.Option(None, min=1, help="Stratified subset of the split (default: all of it); "
                                        "only with --data."),
    batch: str = typer.Option("1,32", help="Batch sizes to time, comma-separated."),
    threads: int = typer.Option(1, min=1, help="ONNX Runtime intra-op threads."),
    rounds: int = typer.Option(5, min=1, help="Interleaved rounds; medians are compared."),
    seconds: float = typer.Option(1.0, min=0.05, help="Seconds of timed calls per mode, batch and round."),
) -> None:
    """Time ONNX Runtime INT8 with session.x64quantprecision on (exact) and off (fast), side by side, and compare
    the two sessions' answers."""
    from fer_edge.console import WideConsole as Console  # wide off a terminal
    from rich.markup import escape
    from rich.table import Table

    from fer_edge.benchmarks.environment import cpu_model
    from fer_edge.cpu import int8_can_saturate_here
    from fer_edge.errors import FerEdgeError, OptionError
    from fer_edge.runtimes import get_runtime
    from fer_edge.runtimes.onnxruntime import X64_QUANT_PRECISION, session_config

    from fer_edge.utils import sigterm_as_interrupt

    console, err = Console(), Console(stderr=True)
    rows: list = []
    files: list = []
    batches: list[int] = []
    try:
        batches = check_options(seconds, batch, data, split, n_images)
        files, notes = dedupe(int8_artifacts(artifacts))
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        names = dict(zip([a.path for a in files], display_names([a.path for a in files])))
        cls = get_runtime("onnxruntime")
        if data is not None:
            from fer_edge.benchmarks.bench import load_inputs

            inputs = load_inputs(data, split, n_images, seed=0)
            what = f"{len(inputs.images):,} {inputs.split} images"
        else:
            inputs, what = None, "256 seeded random inputs"
        with sigterm_as_interrupt():
            for art in files:
                path = art.path
                sessions = {m: cls(path, threads=threads, exact_int8=e) for m, e in MODES.items()}
                if inputs is not None:
                    x_all = inputs.normalized(artifact_normalization(art, sessions["exact"]))
                else:
                    x_all = np.random.default_rng(0).standard_normal((256, 1, 48, 48)).astype(np.float32)
                answers = compare_answers(sessions, x_all)
                for b in batches:
                    x = np.ascontiguousarray(np.resize(x_all, (b, *x_all.shape[1:])))
                    with console.status(f"timing {escape(names[path])}, batch {b}: {rounds} rounds x 2 sessions x "
                                        f"{seconds:g} s"):
                        p50s = time_modes(sessions, x, rounds, seconds)
                    rows.append((path, b, p50s, answers))
    except FerEdgeError as e:  # an OptionError (a value wrong on its own) is a usage error: exit 2
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2 if isinstance(e, OptionError) else 1) from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {len(rows)} of {len(files) * len(batches)} artifact x batch row(s) were timed; "
                   "the table was not printed, and nothing was written", err=True)
        raise typer.Exit(130) from None
    auto = session_config("auto")[X64_QUANT_PRECISION] == "1"
    t = Table(title=f"ONNX Runtime INT8, {X64_QUANT_PRECISION}=1 (exact) vs 0 (fast): {cpu_model()}, "
                    f"{threads} thread(s), p50 ms, median of {rounds} interleaved rounds")
    for col in ("artifact", "batch", "exact ms", "fast ms", "exact / fast", "exact rounds", "fast rounds",
                "max |logit diff|", "top-1 agreement"):
        t.add_column(col, justify="left" if col == "artifact" else "right")
    for path, b, p50s, ans in rows:
        ex, fa = statistics.median(p50s["exact"]), statistics.median(p50s["fast"])
        t.add_row(escape(names[path]), str(b), f"{ex:.3f}", f"{fa:.3f}", f"[bold]{ex / fa:.2f}x[/]",
                  " ".join(f"{v:.3f}" for v in p50s["exact"]), " ".join(f"{v:.3f}" for v in p50s["fast"]),
                  f"{ans['max_abs_diff']:.2g}", f"{ans['agreement']:.2%}")
    console.print(t)
    console.print(f"answers compared on {what}. This CPU: "
                  + ("x86 without VNNI (the fast kernels can saturate)" if int8_can_saturate_here()
                     else "VNNI or not x86 (the fast kernels cannot saturate)")
                  + f"; exact_int8='auto' sets {X64_QUANT_PRECISION}={'1' if auto else '0'} here.", highlight=False)


if __name__ == "__main__":
    import sys

    from fer_edge.console import run_script
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(run_script(cli))  # a closed stdout (`| head`): exit 141 quietly, as fer-edge (1: a failure's)
