"""Distillation speed: the same ``fer-edge train --distill`` steps with the teachers in PyTorch, in ONNX Runtime,
offline (``--distill-targets offline``: the teachers label the training split once, before the steps) and
replayed (``--distill-targets replay``: they label ``--replay-views`` augmented views of it once).

Each measurement is one ``fer-edge train`` epoch capped at ``--steps`` steps (the real loop: batched
augmentation, channels-last student, the teacher's forward pass, the student's backward pass). Rounds are
interleaved: no teacher, ``--teacher-runtime torch``, ``--teacher-runtime onnxruntime``, offline targets and
replayed targets (teachers in ONNX Runtime). Medians of the images/second are compared, with each round's
figures printed beside them; the offline and replay rows also give the seconds the teachers took to label the
whole training split (replay: all its views), which a run pays once.

    python -m fer_edge.benchmarks.distill_speed --data ../shared/data/fer2013/fer2013.csv.gz \\
        --student fer_nano --teacher small --tta --threads 2
"""
from __future__ import annotations

import statistics
from pathlib import Path

import typer

from fer_edge.benchmarks.train_throughput import fer_edge_pipeline_run
from fer_edge.cli.common import existing_path_value, handle_errors

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

RUNTIMES = ("torch", "onnxruntime")
AMP = ("auto", "off", "bf16", "fp16")
OFFLINE = "offline targets (onnxruntime)"
REPLAY = "replay targets (onnxruntime)"


def distill_run(data: str, student: str, teachers: list[str], runtime: str, steps: int, tta: bool,
                batch_size: int, threads: int, amp: str, targets: str = "online",
                views: int | None = None) -> tuple[float, float | None]:
    """Images/second of ``steps`` CPU training steps of ``student`` distilled from ``teachers`` in ``runtime``,
    and (offline or replayed targets) the seconds the teachers took to label the training split first."""
    res = fer_edge_pipeline_run(data, student, "cpu", steps, batch_size=batch_size, amp=amp, num_threads=threads,
                                distill=teachers, distill_tta=tta and bool(teachers), teacher_runtime=runtime,
                                distill_targets=targets, distill_views=views if targets == "replay" else None)
    return float(res.history[0]["images_per_second"]), res.teacher_targets_seconds


@cli.command()
@handle_errors
def main(
    # parser: an empty --data (a script's unset variable) is a usage error, not the current folder
    data: Path = typer.Option(..., parser=existing_path_value, metavar="PATH", help="FER2013 CSV or image folder."),
    student: str = typer.Option("fer_nano", help="Registered model to train."),
    teacher: list[str] = typer.Option(["small"], help="Teacher: a shipped weight name or a checkpoint; repeat "
                                      "for an ensemble."),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Teachers also see the flipped batch (--distill-tta)."),
    steps: int = typer.Option(30, min=2, help="Training steps per measurement."),
    rounds: int = typer.Option(3, min=1, help="Interleaved rounds; medians are compared."),
    batch_size: int = typer.Option(128, min=1),
    threads: int = typer.Option(0, min=0, help="torch and ONNX Runtime threads (0: torch's default)."),
    amp: str = typer.Option("auto", help="Student autocast, as fer-edge train's --amp (auto: bf16 on CPUs with it)."),
    replay_views: int = typer.Option(2, min=1, help="Augmented views per image for the replay row "
                                     "(its labelling time grows with them; its steps should not)."),
) -> None:
    import torch
    from fer_edge.console import WideConsole as Console  # wide off a terminal
    from rich.markup import escape
    from rich.table import Table

    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.data import default_train_split, load_split
    from fer_edge.errors import FerEdgeError, OptionError
    from fer_edge.models import list_models
    from fer_edge.utils import sigterm_as_interrupt
    from fer_edge.weights import resolve_checkpoint

    console, progress = Console(), Console(stderr=True)
    # every option checked, the teachers read and the data decoded before the first (minutes-long) measurement;
    # the options' problems are listed together in one error, a usage error (OptionError: exit 2) when one is a
    # value wrong on its own (an unknown --student, an empty --teacher), else exit 1 (a teacher that cannot be read)
    usage, problems = [], []
    if student not in list_models():
        usage.append(f"--student: unknown model {student!r}; registered models: {', '.join(sorted(list_models()))}")
    if amp not in AMP:
        usage.append(f"--amp {amp!r}: valid: {', '.join(AMP)}")
    if not teacher:
        usage.append("--teacher: name at least one teacher (a shipped weight name or a checkpoint)")
    teachers = []
    for t in teacher:
        if not t.strip():  # a script's unset variable: not the current folder, nor a name to look up
            usage.append("--teacher is empty: give a checkpoint path or shipped model name (an unset variable in a "
                         "script?)")
            continue
        try:
            path = resolve_checkpoint(t)
        except FerEdgeError as e:  # its message starts with the name
            problems.append(f"--teacher: {e}")
            continue
        try:
            load_checkpoint(path)
        except FerEdgeError as e:
            problems.append(f"--teacher {t}: {e}")
            continue
        teachers.append(str(path))
    from fer_edge.training.teachers import repeated_teachers

    # a teacher given twice (by name, path or a copy) is refused by the training it would time: said here, up front
    usage += [p.replace("--distill", "--teacher", 1) for p in repeated_teachers([t for t in teacher if t.strip()])]
    if usage or problems:
        raise (OptionError if usage else FerEdgeError)("; ".join(usage + problems))
    split = default_train_split(str(data))
    n_train = len(load_split(str(data), split, progress=False).labels)
    if n_train // batch_size < steps:
        # a measurement is one epoch capped at --steps, and an epoch drops its partial batch: with fewer full
        # batches it would time fewer steps than the table says (as step_cost refuses)
        raise FerEdgeError(f"the {split} split holds {n_train:,} images: {n_train // batch_size} full batch(es) of "
                           f"--batch-size {batch_size}, and each measurement needs --steps {steps}, that is "
                           f"{steps * batch_size:,} images: lower --steps or --batch-size, or use more data")
    configs = ({"no teacher": ("auto", [], "online")}
               | {f"teacher in {r}": (r, teachers, "online") for r in RUNTIMES}
               | {OFFLINE: ("onnxruntime", teachers, "offline"), REPLAY: ("onnxruntime", teachers, "replay")})
    runs: dict[str, list[float]] = {name: [] for name in configs}
    labelling: dict[str, list[float]] = {OFFLINE: [], REPLAY: []}
    try:
        with sigterm_as_interrupt():
            for r in range(rounds):
                for name, (runtime, ts, targets) in configs.items():
                    # one line as each configuration starts: labelling the training split takes minutes
                    progress.print(f"round {r + 1}/{rounds}: {name}"
                                   + (" (labels the training images first: minutes)" if targets != "online" else "")
                                   + " ...", highlight=False)
                    ips, once = distill_run(str(data), student, ts, runtime, steps, tta, batch_size, threads, amp,
                                            targets, views=replay_views)
                    runs[name].append(ips)
                    if once is not None:
                        labelling[name].append(once)
                console.print(f"round {r + 1}/{rounds}: "
                              + ", ".join(f"{n} {v[-1]:.0f} img/s" for n, v in runs.items())
                              + f"; labelling: offline {labelling[OFFLINE][-1]:.0f} s, "
                                f"replay {labelling[REPLAY][-1]:.0f} s", soft_wrap=True)  # one line in a log
    except KeyboardInterrupt:
        done = min(len(v) for v in runs.values())
        typer.echo(f"interrupted: {done} of {rounds} round(s) finished (printed above); the comparison table was not "
                   "printed, and nothing was written", err=True)
        raise typer.Exit(130) from None
    med = {name: statistics.median(v) for name, v in runs.items()}
    once = statistics.median(labelling[OFFLINE])
    once_replay = statistics.median(labelling[REPLAY])
    n_threads = threads or torch.get_num_threads()
    t = Table(title=f"{escape(student)} distilled from {escape(', '.join(teacher))}"
                    f"{' with flip TTA' if tta else ''}: CPU, {n_threads} threads, batch {batch_size}, {steps} steps, "
                    f"median of {rounds}")
    for col, justify in (("configuration", "left"), ("images/s", "right"), ("vs teacher in torch", "right"),
                         (f"epoch of {n_train:,} images", "right"), ("runs", "right")):
        t.add_column(col, justify=justify)
    for name, v in runs.items():
        t.add_row(name, f"{med[name]:.0f}", f"{med[name] / med['teacher in torch']:.2f}x",
                  f"{n_train / med[name]:.0f} s", " ".join(f"{x:.0f}" for x in v))
    console.print(t)
    console.print(f"ONNX Runtime teacher vs PyTorch teacher (median ratio): "
                  f"[bold]{med['teacher in onnxruntime'] / med['teacher in torch']:.2f}x[/]")
    console.print(f"offline targets vs ONNX Runtime teacher (median ratio, steps only): "
                  f"[bold]{med[OFFLINE] / med['teacher in onnxruntime']:.2f}x[/]; labelling the {n_train:,} "
                  f"training images took {once:.0f} s (median), paid once per run", highlight=False)
    console.print(f"replay targets vs ONNX Runtime teacher (median ratio, steps only): "
                  f"[bold]{med[REPLAY] / med['teacher in onnxruntime']:.2f}x[/], vs offline "
                  f"{med[REPLAY] / med[OFFLINE]:.2f}x; labelling {replay_views} views of each took {once_replay:.0f} s "
                  "(median), paid once per run or once per --distill-cache", highlight=False)


if __name__ == "__main__":
    import sys

    from fer_edge.console import run_script
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(run_script(cli))  # a closed stdout (`| head`): exit 141 quietly, as fer-edge (1: a failure's)
