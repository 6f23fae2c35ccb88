"""``fer-edge train``."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from fer_edge.cli import app
from fer_edge.cli.common import Device, console, existing_path_value, handle_errors, model_value, path_value, split_value


class Optimizer(str, Enum):
    adamw = "adamw"
    adam = "adam"
    sgd = "sgd"


class Scheduler(str, Enum):
    onecycle = "onecycle"
    cosine = "cosine"
    step = "step"
    none = "none"


class ClassWeights(str, Enum):
    none = "none"
    balanced = "balanced"
    sqrt = "sqrt"


class TeacherRuntime(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"


class DistillTargets(str, Enum):
    online = "online"
    offline = "offline"
    replay = "replay"


class Augment(str, Enum):
    none = "none"
    light = "light"
    standard = "standard"
    strong = "strong"


class Amp(str, Enum):
    auto = "auto"
    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


@app.command()
@handle_errors
def train(
    data: Path = typer.Option(..., parser=existing_path_value, metavar="PATH", help="FER2013 CSV (.csv/.csv.gz) or image-folder root."),
    model: str = typer.Option("custom_cnn", help="Registered model name (see `fer-edge models`)."),
    out: Path = typer.Option(Path("runs/run"), parser=path_value, metavar="PATH", help="Run directory (checkpoints, metrics, plots)."),
    model_kwargs: Optional[str] = typer.Option(None, help='Model keyword arguments as JSON, e.g. \'{"dropout": 0.1}\'.'),
    split: Optional[str] = typer.Option(None, parser=split_value, metavar="SPLIT", help="Training split (default Training / train)."),
    val_split: Optional[str] = typer.Option(None, parser=split_value, metavar="SPLIT", help="Validation split (default PublicTest / val; never a test split by default)."),
    epochs: int = typer.Option(30, help="Training epochs."),
    batch_size: int = typer.Option(128, help="Images a step (split over processes under torchrun)."),
    lr: float = typer.Option(3e-3, help="Peak learning rate."),
    weight_decay: float = typer.Option(5e-4, help="Weight decay (not on biases and norm layers)."),
    optimizer: Optimizer = typer.Option(Optimizer.adamw, help="Optimizer."),
    scheduler: Scheduler = typer.Option(Scheduler.onecycle, help="Learning-rate schedule over the whole run."),
    warmup_epochs: Optional[float] = typer.Option(
        None, show_default=False,
        help="Warm-up of onecycle (at most 30% of the run) and cosine, in epochs (default 1); cosine's, when not "
             "shorter than the run, is 30% of it (with a warning). Refused with step and none."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the loss (0: off)."),
    class_weights: ClassWeights = typer.Option(ClassWeights.none, help="Loss weights against class imbalance."),
    mixup: float = typer.Option(0.0, help="MixUp Beta alpha (0: off)."),
    cutmix: float = typer.Option(0.0, help="CutMix Beta alpha (0: off)."),
    mix_prob: float = typer.Option(1.0, help="Probability that a batch is mixed at all (with --mixup/--cutmix)."),
    ema: float = typer.Option(0.0, help="Weight EMA decay, e.g. 0.999 (0: off)."),
    augment: Augment = typer.Option(Augment.standard, help="Batched augmentation preset."),
    init: Optional[str] = typer.Option(None, parser=model_value, metavar="MODEL", help="Start from this checkpoint's weights (a path or a shipped name: "
                                       "small, nano; fine-tuning: same model and kwargs)."),
    distill: Optional[List[str]] = typer.Option(None, parser=model_value, metavar="MODEL", help="Teacher checkpoint for distillation (a path or a shipped "
                                                "name); repeat for an ensemble."),
    distill_alpha: Optional[float] = typer.Option(None, help="Weight of the distillation loss (0..1; default 0.5): the "
                                                  "loss is (1 - alpha) x the cross-entropy + alpha x T^2 x the KL "
                                                  "divergence to the teachers' probabilities at temperature T."),
    distill_temperature: Optional[float] = typer.Option(None, help="Softmax temperature T of the distillation loss "
                                                        "(default 4; its KL term is scaled by T^2)."),
    distill_tta: bool = typer.Option(False, "--distill-tta", help="Teachers also see the flipped batch."),
    teacher_runtime: TeacherRuntime = typer.Option(
        TeacherRuntime.auto, help="Where --distill teachers run: onnxruntime (CPU only, faster there), torch, "
        "or auto (onnxruntime when training on the CPU, else torch)."),
    distill_targets: DistillTargets = typer.Option(
        DistillTargets.online, help="online: the teachers see every augmented batch; offline: each training image "
        "once, un-augmented, before training (a step then costs what it does without a teacher; on nano it matched "
        "online without MixUp and lost a point with it: see README); replay: --distill-views augmented views "
        "of each image, labelled once, which the steps then replay (the teacher answers for the view the student "
        "sees)."),
    distill_views: Optional[int] = typer.Option(
        None, help="--distill-targets replay: augmented views per training image (default 8)."),
    distill_cache: Optional[Path] = typer.Option(
        None, parser=path_value, metavar="PATH", help="--distill-targets replay: keep the views and their targets in this file; "
        "a later run with the same teachers, data, augmentation, views, seed, temperature and TTA loads it."),
    qat: bool = typer.Option(False, "--qat", help="Quantization-aware fine-tuning: train with INT8 rounding "
                             "simulated, in float32 (--amp bf16/fp16 are refused with it); the checkpoint stays "
                             "FP32 (usually with --init)."),
    patience: int = typer.Option(0, help="Early stopping patience in epochs (0: off)."),
    seed: int = typer.Option(0, help="Seed of the initial weights, the data order and the augmentation."),
    device: Device = typer.Option(Device.auto, help="Torch device (auto: cuda, else mps, else cpu)."),
    amp: Amp = typer.Option(Amp.auto, help="Mixed precision (auto: fp16 on CUDA, bf16 on CPUs with native bf16, "
                                           "else off; always off with --qat)."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last",
                                       help="Channels-last memory format (faster on CPUs: see README)."),
    threads: int = typer.Option(0, help="torch intra-op threads (0: default)."),
    max_steps_per_epoch: int = typer.Option(0, help="Cap steps per epoch (quick runs; 0: whole split)."),
    wandb: Optional[str] = typer.Option(None, help="Also log to this Weights & Biases project."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt (repeat the same options)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar of each epoch."),
) -> None:
    """Train a model on FER2013 and write a run directory (best.pt, last.pt, metrics, plots)."""
    from fer_edge.errors import OptionError, TrainingError
    from fer_edge.training import TrainConfig, train as run_train
    from fer_edge.training.trainer import validate_config

    # options that are wrong on their own (or together) are usage errors, exit 2, as click's own checks are:
    # every one of them listed at once, before any data is read (so the counts have no min= of click's, which
    # would stop at the first: validate_config checks them with the others)
    early: list[str] = []  # problems found before a config can hold the value, listed with the others
    kwargs = {}
    if model_kwargs is not None and not model_kwargs.strip():
        early.append("--model-kwargs is empty: give a JSON object such as '{\"dropout\": 0.1}', or leave the "
                     "option out")
    elif model_kwargs is not None:
        try:
            kwargs = json.loads(model_kwargs)
        except json.JSONDecodeError as e:
            early.append(f"--model-kwargs is not valid JSON: {e}")
    if wandb is not None and not wandb.strip():  # it read as "no logging", silently
        early.append("--wandb is empty: name a Weights & Biases project, or leave the option out")
    given = {k: v for k, v in (("distill_alpha", distill_alpha), ("distill_temperature", distill_temperature),
                               ("warmup_epochs", warmup_epochs)) if v is not None}
    cfg = TrainConfig(
        data=str(data), model=model, out=str(out), model_kwargs=kwargs, split=split, val_split=val_split,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer.value,
        scheduler=scheduler.value, label_smoothing=label_smoothing,
        class_weights=class_weights.value, mixup=mixup, cutmix=cutmix, mix_prob=mix_prob, ema=ema, augment=augment.value,
        init=init, distill=list(distill or []), **given, distill_tta=distill_tta,
        teacher_runtime=teacher_runtime.value, distill_targets=distill_targets.value,
        distill_views=distill_views, distill_cache=str(distill_cache) if distill_cache else None, qat=qat,
        patience=patience,
        seed=seed, device=device.value, amp=amp.value,
        channels_last=channels_last, num_threads=threads, max_steps_per_epoch=max_steps_per_epoch, wandb=wandb,
    )
    try:
        # refuses a distillation option typed without a teacher, at any value
        validate_config(cfg, given=given, problems=early)
    except TrainingError as e:
        raise OptionError(str(e)) from None
    result = run_train(cfg, resume=resume, progress=progress)
    from rich.markup import escape

    console.print(  # (the folder escaped: --out 'q[/x]' was read as markup, a traceback after the whole run)
        f"best val accuracy [bold]{result.best_accuracy:.4f}[/] at epoch {result.best_epoch} "
        f"({result.epochs_run} epochs{', stopped early' if result.stopped_early else ''}); "
        f"run in {escape(str(result.out_dir))}"
    )

