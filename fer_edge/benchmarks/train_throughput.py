"""Training throughput: fer-edge's pipeline against the source notebooks' pipeline, side by side.

Ours: the real ``fer-edge train`` loop (uint8 split in memory on the device, batched
tensor augmentation, channels-last, batch 128). Theirs: per-image PIL transforms
(flip, rotation) in a torch DataLoader, float32, NCHW, batch 32. Both train the same
model on the same images on the same device; rounds are interleaved and the median
images/second of each is compared.

    python -m fer_edge.benchmarks.train_throughput --data ../shared/data/fer2013/fer2013.csv.gz
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import typer

from fer_edge.cli.common import existing_path_value, handle_errors

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

#: The batch sizes of the two pipelines: the notebooks' and fer-edge train's default.
NOTEBOOK_BATCH = 32
FER_EDGE_BATCH = 128
#: Below this many steps a measurement gets a note: both pipelines are timed from their first step (see
#: :func:`notebook_pipeline_ips`), so the first steps' one-time costs weigh on the figures.
FEW_STEPS = 30


def check_options(model: str, device: str) -> None:
    """Refuse an unknown ``--model`` or ``--device`` as a usage error (:class:`~fer_edge.errors.OptionError`, exit
    2) before the data is read, both in one error, as :func:`fer_edge.benchmarks.step_cost.check_options` does."""
    from fer_edge.constants import TRAIN_DEVICES as DEVICES
    from fer_edge.errors import OptionError
    from fer_edge.models import list_models

    problems = []
    if model not in list_models():
        problems.append(f"--model: unknown model {model!r}; registered models: {', '.join(sorted(list_models()))}")
    if device not in DEVICES:
        problems.append(f"--device: unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if problems:
        raise OptionError("; ".join(problems))


class NotebookImages:
    """The notebooks' map-style data set (all a DataLoader needs is ``__len__`` and ``__getitem__``): each image as a
    PIL image through ``transform``, with its label. At module level, holding everything it uses as attributes, so
    that DataLoader workers started by spawn (macOS, Windows; forkserver, Python 3.14's default on Linux) can unpickle
    it: the class defined inside :func:`notebook_pipeline_ips` made ``--num-workers`` crash there."""

    def __init__(self, images, labels, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i].numpy(), mode="L")), self.labels[i]


def notebook_pipeline_ips(images, labels, model_name: str, device, steps: int, batch_size: int = NOTEBOOK_BATCH,
                          num_workers: int = 0) -> float:
    """Images/second of the notebooks' recipe: PIL per-image transforms in a DataLoader, NCHW float32.

    Timed as fer-edge train's ``images_per_second`` times its epoch (:func:`fer_edge_pipeline_ips`): from the first
    step of a freshly built model, every step counted (no untimed warm-up on one side only), so the two compare;
    with few steps the first steps' one-time costs weigh on both. The loader drops the last partial batch, as the
    notebooks' did: fewer than ``batch_size`` images is refused.
    """
    import torch

    from fer_edge.errors import FerEdgeError

    if len(labels) < batch_size:
        raise FerEdgeError(f"the notebook pipeline needs at least one full batch of {batch_size} training images; "
                           f"the split holds {len(labels)}")
    from torchvision import transforms

    from fer_edge.models import create_model

    tf = transforms.Compose([  # torchvision's transform classes pickle, as spawned workers need
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(10),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.25]),
    ])
    loader = torch.utils.data.DataLoader(NotebookImages(images, labels, tf), batch_size=batch_size, shuffle=True,
                                         num_workers=num_workers, drop_last=True)
    model = create_model(model_name).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = 0
    t0 = time.perf_counter()  # as the trainer's epoch: from before its first batch is drawn
    it = iter(loader)
    for _ in range(steps):
        try:
            x, y = next(it)
        except StopIteration:  # a small data set: start another epoch, as a training loop would
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(device), y.to(device)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def fer_edge_pipeline_run(data: str, model_name: str, device: str, steps: int, batch_size: int = 128,
                          amp: str = "off", **options):
    """One epoch of ``fer-edge train`` capped at ``steps`` steps in a temporary run directory: its TrainResult.

    ``options`` are further ``TrainConfig`` fields (``distill=...``, ``num_threads=...``).
    """
    from fer_edge.training import TrainConfig, train

    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(data=data, model=model_name, out=str(Path(d) / "run"), epochs=1, batch_size=batch_size,
                          max_steps_per_epoch=steps, device=device, augment="standard", amp=amp, **options)
        return train(cfg, progress=False, quiet=True)


def fer_edge_pipeline_ips(data: str, model_name: str, device: str, steps: int, batch_size: int = 128,
                          amp: str = "off", **options) -> float:
    """Images/second of :func:`fer_edge_pipeline_run`'s epoch (validation not timed)."""
    res = fer_edge_pipeline_run(data, model_name, device, steps, batch_size, amp, **options)
    return float(res.history[0]["images_per_second"])


@cli.command()
@handle_errors
def main(
    # parser: an empty --data (a script's unset variable) is a usage error, not the current folder
    data: Path = typer.Option(..., parser=existing_path_value, metavar="PATH", help="FER2013 CSV or image folder."),
    model: str = typer.Option("custom_cnn", help="Registered model."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
    seconds_hint: int = typer.Option(20, min=1, help="Rough seconds per measurement (sets the step counts)."),
    rounds: int = typer.Option(3, min=1, help="Interleaved rounds; medians are compared."),
    num_workers: int = typer.Option(0, min=0, help="DataLoader workers for the notebook pipeline."),
) -> None:
    import torch
    from fer_edge.console import WideConsole as Console  # wide off a terminal
    from rich.table import Table

    from fer_edge.data import default_train_split, load_split
    from fer_edge.errors import FerEdgeError
    from fer_edge.training.trainer import resolve_device
    from fer_edge.utils import sigterm_as_interrupt

    console = Console()
    check_options(model, device)
    dev = resolve_device(device)
    split_name = default_train_split(str(data))
    split = load_split(str(data), split_name)
    n = len(split.labels)
    if n < FER_EDGE_BATCH:
        # fer-edge's epoch drops its partial batch (and the notebook loader too): below one full batch of each,
        # neither pipeline would measure the batch the table names
        raise FerEdgeError(f"--data {data}: the {split_name} split holds {n} images; this benchmark needs at least "
                           f"{FER_EDGE_BATCH} (one full batch of fer-edge's pipeline, batch {FER_EDGE_BATCH}; the "
                           f"notebook pipeline's is {NOTEBOOK_BATCH})")
    ours, theirs, bf16 = [], [], []
    try:
        with sigterm_as_interrupt():
            # step counts from a quick probe so each measurement takes about seconds_hint
            probe = fer_edge_pipeline_ips(str(data), model, device, steps=5)
            ours_steps = max(10, int(probe * seconds_hint / FER_EDGE_BATCH))
            if n // FER_EDGE_BATCH < ours_steps:
                ours_steps = n // FER_EDGE_BATCH
                console.print(f"note: the {split_name} split holds {n:,} images, {ours_steps} full batch(es) of "
                              f"{FER_EDGE_BATCH}: fer-edge's figures are over {ours_steps} step(s), one epoch",
                              highlight=False)
            probe_nb = notebook_pipeline_ips(split.images, split.labels, model, dev, steps=10,
                                             num_workers=num_workers)
            nb_steps = max(10, int(probe_nb * seconds_hint / NOTEBOOK_BATCH))
            if min(ours_steps, nb_steps) < FEW_STEPS:
                console.print(f"note: each measurement is {ours_steps} step(s) of fer-edge's pipeline and {nb_steps} "
                              f"of the notebook's; both are timed from the first step of a freshly built model, so "
                              f"with fewer than {FEW_STEPS} the first steps' one-time costs weigh on the figures and "
                              "the ratio: raise --seconds-hint (or use more data) for steady-state rates",
                              highlight=False, soft_wrap=True)  # one line in a log
            for r in range(rounds):
                theirs.append(notebook_pipeline_ips(split.images, split.labels, model, dev, nb_steps,
                                                    num_workers=num_workers))
                ours.append(fer_edge_pipeline_ips(str(data), model, device, ours_steps))
                bf16.append(fer_edge_pipeline_ips(str(data), model, device, ours_steps, amp="bf16"))
                console.print(f"round {r + 1}/{rounds}: fer-edge {ours[-1]:.0f} img/s (bf16 autocast "
                              f"{bf16[-1]:.0f}), notebook {theirs[-1]:.0f} img/s")
    except KeyboardInterrupt:
        done = min(len(ours), len(theirs), len(bf16))
        typer.echo(f"interrupted: {done} of {rounds} round(s) finished (printed above); the table was not printed, "
                   "and nothing was written", err=True)
        raise typer.Exit(130) from None
    t = Table(title=f"training throughput, {model} on {dev} ({torch.get_num_threads()} threads), median of {rounds}")
    t.add_column("pipeline")
    t.add_column("images/s", justify="right")
    t.add_column("runs", justify="right")
    t.add_row("notebook: PIL per image, DataLoader, NCHW fp32, batch 32", f"{statistics.median(theirs):.0f}",
              " ".join(f"{v:.0f}" for v in theirs))
    t.add_row("fer-edge: uint8 in memory, batched tensor aug, channels-last, batch 128",
              f"{statistics.median(ours):.0f}", " ".join(f"{v:.0f}" for v in ours))
    t.add_row("fer-edge with bf16 autocast (--amp bf16)", f"{statistics.median(bf16):.0f}",
              " ".join(f"{v:.0f}" for v in bf16))
    console.print(t)
    console.print(f"speed-up (median ratio): [bold]{statistics.median(ours) / statistics.median(theirs):.2f}x[/]; "
                  f"bf16 autocast vs fp32: {statistics.median(bf16) / statistics.median(ours):.2f}x")


if __name__ == "__main__":
    import sys

    from fer_edge.console import run_script
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(run_script(cli))  # a closed stdout (`| head`): exit 141 quietly, as fer-edge (1: a failure's)
