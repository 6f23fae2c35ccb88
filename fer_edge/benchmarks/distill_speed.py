"""Distillation speed: the same ``fer-edge train --distill`` steps with the teachers in PyTorch and in ONNX Runtime.

Each measurement is one ``fer-edge train`` epoch capped at ``--steps`` steps (the real loop: batched
augmentation, channels-last student, the teacher's forward pass, the student's backward pass). Rounds are
interleaved: no teacher, ``--teacher-runtime torch``, ``--teacher-runtime onnxruntime``. Medians of the
images/second are compared, with each round's figures printed beside them.

    python -m fer_edge.benchmarks.distill_speed --data ../shared/data/fer2013/fer2013.csv.gz \\
        --student fer_nano --teacher small --tta --threads 2
"""
from __future__ import annotations

import statistics
from pathlib import Path

import typer

from fer_edge.benchmarks.train_throughput import fer_edge_pipeline_ips

cli = typer.Typer(add_completion=False)

RUNTIMES = ("torch", "onnxruntime")


def distill_ips(data: str, student: str, teachers: list[str], runtime: str, steps: int, tta: bool,
                batch_size: int, threads: int, amp: str) -> float:
    """Images/second of ``steps`` CPU training steps of ``student`` distilled from ``teachers`` in ``runtime``."""
    return fer_edge_pipeline_ips(data, student, "cpu", steps, batch_size=batch_size, amp=amp, num_threads=threads,
                                 distill=teachers, distill_tta=tta and bool(teachers), teacher_runtime=runtime)


@cli.command()
def main(
    data: Path = typer.Option(..., exists=True, help="FER2013 CSV or image folder."),
    student: str = typer.Option("fer_nano", help="Registered model to train."),
    teacher: list[str] = typer.Option(["small"], help="Teacher: a shipped weight name or a checkpoint; repeat "
                                      "for an ensemble."),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Teachers also see the flipped batch (--distill-tta)."),
    steps: int = typer.Option(30, min=2, help="Training steps per measurement."),
    rounds: int = typer.Option(3, min=1, help="Interleaved rounds; medians are compared."),
    batch_size: int = typer.Option(128, min=1),
    threads: int = typer.Option(0, min=0, help="torch and ONNX Runtime threads (0: torch's default)."),
    amp: str = typer.Option("auto", help="Student autocast, as fer-edge train's --amp (auto: bf16 on CPUs with it)."),
) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from fer_edge.weights import resolve_checkpoint

    from fer_edge.errors import FerEdgeError

    console = Console()
    try:
        teachers = [str(resolve_checkpoint(t)) for t in teacher]
    except FerEdgeError as e:
        Console(stderr=True).print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from None
    configs = {"no teacher": ("torch", [])} | {f"teacher in {r}": (r, teachers) for r in RUNTIMES}
    runs: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(rounds):
        for name, (runtime, ts) in configs.items():
            runs[name].append(distill_ips(str(data), student, ts, runtime, steps, tta, batch_size, threads, amp))
        console.print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.0f} img/s" for n, v in runs.items()))
    med = {name: statistics.median(v) for name, v in runs.items()}
    n_threads = threads or torch.get_num_threads()
    t = Table(title=f"{student} distilled from {', '.join(teacher)}{' with flip TTA' if tta else ''}: "
                    f"CPU, {n_threads} threads, batch {batch_size}, {steps} steps, median of {rounds}")
    for col, justify in (("configuration", "left"), ("images/s", "right"), ("vs teacher in torch", "right"),
                         ("runs", "right")):
        t.add_column(col, justify=justify)
    for name, v in runs.items():
        t.add_row(name, f"{med[name]:.0f}", f"{med[name] / med['teacher in torch']:.2f}x",
                  " ".join(f"{x:.0f}" for x in v))
    console.print(t)
    console.print(f"ONNX Runtime teacher vs PyTorch teacher (median ratio): "
                  f"[bold]{med['teacher in onnxruntime'] / med['teacher in torch']:.2f}x[/]")


if __name__ == "__main__":
    cli()
