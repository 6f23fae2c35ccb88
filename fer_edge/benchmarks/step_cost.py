"""What one training step costs on this device: images/second, milliseconds, and how many operator calls (and,
on CUDA, kernel launches) each step makes, for several batch sizes side by side.

Written for a lent GPU, where the first distillation round trained only 7,400-9,800 images/s at batch 128 on an
H200 (README, "The first GPU round"): with a few million MACs an image, a step's time is set by how many
kernels Python launches one by one (batched augmentation, EMA, the optimizer, the model's layers), not by the
arithmetic. This measures that before a round's budget is spent, so the round's ``--batch-size`` is chosen on
figures.

Each measurement is one ``fer-edge train`` epoch capped at ``--steps`` steps (the real loop). Per-step operator
and kernel counts come from two profiled runs of different lengths, differenced, so loading, validation and
checkpoint writes cancel out. Rounds are interleaved; medians are compared.

    python -m fer_edge.benchmarks.step_cost --data ../shared/data/fer2013/fer2013.csv.gz \\
        --model fer_nano --model resnet18 --batch-size 128 --batch-size 512 --device cuda --amp bf16
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path

import typer

from fer_edge.cli.common import existing_path_value, handle_errors
from fer_edge.constants import TRAIN_DEVICES

from fer_edge.benchmarks.train_throughput import fer_edge_pipeline_run

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

#: The two profiled runs' lengths (steps) whose difference gives the per-step counts.
PROFILE_STEPS = (2, 6)


#: The devices ``--device`` names (as fer-edge train's).
DEVICES = TRAIN_DEVICES
#: The autocast modes ``--amp`` names (as fer-edge train's).
AMP = ("auto", "off", "bf16", "fp16")


def check_options(models: list[str], batch_sizes: list[int], device: str, amp: str) -> None:
    """Refuse, as a usage error (:class:`~fer_edge.errors.OptionError`, exit 2) before the data is read, every
    option value that is wrong on its own: an unknown or repeated ``--model``, a ``--batch-size`` below 1 or
    repeated, an unknown ``--device`` or ``--amp``; one error lists them all."""
    from fer_edge.errors import OptionError
    from fer_edge.models import list_models

    problems = []
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        problems.append(f"--model: unknown model {unknown[0]!r}; registered models: "
                        f"{', '.join(sorted(list_models()))}")
    small = sorted({b for b in batch_sizes if b < 1})
    if small:
        problems.append(f"--batch-size must be at least 1, got {', '.join(map(str, small))}")
    for option, values in (("--model", models), ("--batch-size", batch_sizes)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            problems.append(f"{option} {', '.join(repeated)} is given more than once: name each once")
    if device not in DEVICES:
        problems.append(f"--device: unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if amp not in AMP:
        problems.append(f"--amp {amp!r}: valid: {', '.join(AMP)}")
    if problems:
        raise OptionError("; ".join(problems))


def check_plan(n_train: int, split: str, batch_sizes: list[int], steps: int) -> None:
    """Refuse a split too small for ``--steps`` full batches of each ``--batch-size`` (after
    :func:`check_options`).

    A training epoch holds ``n_train // batch`` full batches (the partial one is dropped) and a measurement is one
    epoch capped at ``--steps``: with fewer batches it would time fewer steps than the table says, and the
    profiled runs (:data:`PROFILE_STEPS`) would not differ in length.
    """
    from fer_edge.errors import FerEdgeError

    need = max(steps, PROFILE_STEPS[1])
    short = [b for b in batch_sizes if n_train // b < need]
    if short:
        b = max(short)
        raise FerEdgeError(
            f"the {split} split holds {n_train:,} images: {n_train // b} full batch(es) of --batch-size {b}, and "
            f"each measurement needs {need} (--steps {steps}; the operator counts profile {PROFILE_STEPS[1]} steps), "
            f"that is {need * b:,} images: lower --steps or --batch-size, or use more data")


def amp_label(amp: str, device) -> str:
    """``--amp`` as the title shows it, with the autocast the trainer uses on ``device`` (``auto`` resolved: bf16
    on a CPU with native bf16, fp16 on CUDA, else off), so that runs with other ``--amp`` values compare."""
    from fer_edge.training import TrainConfig
    from fer_edge.training.trainer import autocast_dtype

    dtype = autocast_dtype(TrainConfig(data="", amp=amp), device)
    used = "off (fp32)" if dtype is None else {"bfloat16": "bf16", "float16": "fp16"}[str(dtype).removeprefix("torch.")]
    return f"--amp {amp}" if amp != "auto" else f"--amp auto: {used}"


def step_counts(data: str, model: str, device: str, batch_size: int, amp: str,
                steps: tuple[int, int] = PROFILE_STEPS, **options) -> dict[str, float | None]:
    """Operator calls (``aten`` operators called from outside another ``aten`` operator) and CUDA kernel
    launches per training step, from two profiled runs of ``steps`` steps, differenced."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from fer_edge.training.trainer import resolve_device

    cuda = resolve_device(device).type == "cuda"
    if not cuda:
        # the profiler's kineto library prints "ERROR: ... gpuGetDeviceCount failed" and two trace lines per run
        # to stderr on a machine without a GPU, where nothing is wrong: quiet them, unless the user set the level
        # (read when the profiler first starts)
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    totals = []
    for n in steps:
        with profile(activities=activities) as prof:
            fer_edge_pipeline_run(data, model, device, n, batch_size=batch_size, amp=amp, **options)
        events = prof.events()
        ops = sum(1 for e in events if e.name.startswith("aten::") and e.device_type == DeviceType.CPU
                  and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")))
        kernels = sum(1 for e in events if e.device_type == DeviceType.CUDA) if cuda else None
        totals.append((ops, kernels))
    span = steps[1] - steps[0]
    (ops_a, k_a), (ops_b, k_b) = totals
    return {"ops_per_step": (ops_b - ops_a) / span, "kernels_per_step": (k_b - k_a) / span if cuda else None}


@cli.command()
@handle_errors
def main(
    # parser: an empty --data (a script's unset variable) is a usage error, not the current folder
    data: Path = typer.Option(..., parser=existing_path_value, metavar="PATH", help="FER2013 CSV or image folder."),
    model: list[str] = typer.Option(["fer_nano"], help="Registered model; repeat for several."),
    batch_size: list[int] = typer.Option([128, 512], help="Batch size; repeat for several (the first is the "
                                         "reference for the ratios)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
    amp: str = typer.Option("auto", help="Autocast, as fer-edge train's --amp."),
    steps: int = typer.Option(30, min=2, help="Training steps per timed measurement."),
    rounds: int = typer.Option(3, min=1, help="Interleaved rounds; medians are compared."),
    threads: int = typer.Option(0, min=0, help="torch threads on a CPU (0: torch's default)."),
    ema: float = typer.Option(0.998, min=0.0, max=0.9999, help="Weight EMA decay, as the shipped recipes use "
                              "(0: no EMA)."),
) -> None:
    import torch
    from fer_edge.console import WideConsole as Console  # wide off a terminal
    from rich.table import Table

    from fer_edge.data import default_train_split, load_split
    from fer_edge.training.trainer import resolve_device
    from fer_edge.utils import sigterm_as_interrupt

    console = Console()
    check_options(model, batch_size, device, amp)
    dev = resolve_device(device)
    split = default_train_split(str(data))
    check_plan(len(load_split(str(data), split, progress=False).labels), split, batch_size, steps)
    options = dict(num_threads=threads, ema=ema)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    keys = [(m, b) for m in model for b in batch_size]
    ips: dict[tuple[str, int], list[float]] = {k: [] for k in keys}
    counts: dict[tuple[str, int], dict] = {}
    try:
        with sigterm_as_interrupt():
            for r in range(rounds):
                for m, b in keys:
                    res = fer_edge_pipeline_run(str(data), m, device, steps, batch_size=b, amp=amp, **options)
                    ips[(m, b)].append(float(res.history[0]["images_per_second"]))
                console.print(f"round {r + 1}/{rounds}: " + ", ".join(f"{m} b{b} {ips[(m, b)][-1]:.0f} img/s"
                                                                     for m, b in keys))
            for k in keys:
                counts[k] = step_counts(str(data), k[0], device, k[1], amp, **options)
    except KeyboardInterrupt:
        done = min(len(v) for v in ips.values())
        stage = (f"{done} of {rounds} timing round(s) finished (printed above)" if done < rounds else
                 f"the timing rounds finished (printed above), the operator counts of {len(counts)} of {len(keys)} "
                 "configuration(s)")
        typer.echo(f"interrupted: {stage}; the table was not printed, and nothing was written", err=True)
        raise typer.Exit(130) from None
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{dev} ({torch.get_num_threads()} threads)"
    t = Table(title=f"one training step on {where}, {amp_label(amp, dev)}, --ema {ema}, median of {rounds} rounds of "
                    f"{steps} steps")
    for col in ("model", "batch", "images/s", f"vs batch {batch_size[0]}", "ms/step", "operator calls/step",
                "CUDA kernels/step", "rounds (images/s)"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for m, b in keys:
        med = statistics.median(ips[(m, b)])
        ref = statistics.median(ips[(m, batch_size[0])])
        c = counts[(m, b)]
        t.add_row(m, str(b), f"{med:.0f}", f"{med / ref:.2f}x", f"{1000 * b / med:.1f}", f"{c['ops_per_step']:.0f}",
                  "-" if c["kernels_per_step"] is None else f"{c['kernels_per_step']:.0f}",
                  " ".join(f"{v:.0f}" for v in ips[(m, b)]))
    console.print(t)
    if dev.type != "cuda":
        console.print("CUDA kernels/step: not measured, this device is not a CUDA GPU.")


if __name__ == "__main__":
    import sys

    from fer_edge.console import run_script
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(run_script(cli))  # a closed stdout (`| head`): exit 141 quietly, as fer-edge (1: a failure's)
