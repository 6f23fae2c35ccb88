"""``fer-edge train``: the training loop.

The training split lives on the training device as uint8; each batch is indexed,
converted and augmented there with tensor ops (no DataLoader, no per-image PIL).
Every epoch reseeds torch's RNG from (seed, epoch) (and, under torchrun, each rank but the first its
augmentation from (seed, epoch, rank)), so a run resumed from ``last.pt`` repeats exactly what an uninterrupted
run would have done.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fer_edge.checkpoint import load_checkpoint, non_finite_tensors, save_checkpoint, state_dict_mismatch
from fer_edge.constants import IMAGE_SIZE, LABELS, TRAIN_DEVICES
from fer_edge.errors import CheckpointError, FerEdgeError, TrainingError
from fer_edge.metrics import classification_metrics
from fer_edge.preprocess import Normalization
from fer_edge.training.augment import PRESETS, augment_batch, mix_batch
from fer_edge.training.config import TrainConfig, option_flag
from fer_edge.training.teachers import (
    DISTILL_TARGETS,
    TEACHER_RUNTIMES,
    load_teachers,
    precompute_teacher_probs,
    repeated_teachers,
    resolve_teacher_runtime,
    teacher_probs,
)
from fer_edge.utils import (check_not_in_data, check_output_file, check_writable_dir, interrupts_deferred,
                            mark_reported, sigterm_as_interrupt, write_json_atomic, write_text_atomic)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("onecycle", "cosine", "step", "none")
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
HISTORY_FIELDS = (
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr",
    "epoch_seconds", "images_per_second", "val_seconds",
)


@dataclass
class TrainResult:
    out_dir: Path
    best_accuracy: float
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    #: ``--distill-targets offline``: seconds the teachers took to label the training split (before epoch 1).
    teacher_targets_seconds: float | None = None


# --- set-up helpers -------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda: no CUDA device is available here (try --device auto)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise TrainingError("--device mps: MPS is not available here (try --device auto)")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise TrainingError(f"unknown device {name!r}; valid: {', '.join(TRAIN_DEVICES)}")


def validate_config(cfg: TrainConfig, given: Collection[str] = (), problems: Collection[str] = ()) -> None:
    """Collect every bad option, then fail once listing them all.

    ``given`` names the config fields the user typed (the CLI passes them), so that a
    distillation option typed without a teacher is refused even at its default value; ``problems``: ones the
    caller found before a config could hold the value (``--model-kwargs`` that is not JSON), listed first.
    """
    problems = list(problems)
    if not isinstance(cfg.model_kwargs, dict):
        problems.append(f"--model-kwargs takes a JSON object such as '{{\"dropout\": 0.1}}', "
                        f"got {cfg.model_kwargs!r}")
    elif "num_classes" in cfg.model_kwargs:
        problems.append(f"--model-kwargs cannot set num_classes: FER2013 has {len(LABELS)} classes")
    numbers = ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "mix_prob", "ema",
               "distill_alpha", "distill_temperature")
    bad_numbers = [n for n in numbers if not isinstance(getattr(cfg, n), (int, float))
                   or not math.isfinite(getattr(cfg, n))]
    for name in bad_numbers:
        problems.append(f"--{name.replace('_', '-')} must be a finite number, got {getattr(cfg, name)!r}")
    # the checks below judge the others; a number already refused stands at its (valid) default for them
    cfg = replace(cfg, **{n: getattr(TrainConfig(data=cfg.data), n) for n in bad_numbers})
    from fer_edge.models import list_models

    if cfg.model not in list_models():
        what = ("is empty: name a registered model" if not str(cfg.model).strip()
                else f"unknown model {cfg.model!r}")
        problems.append(f"--model: {what}; registered models: {', '.join(sorted(list_models()))}")
    elif isinstance(cfg.model_kwargs, dict) and "num_classes" not in cfg.model_kwargs:
        problems += _model_problems(cfg.model, cfg.model_kwargs)
    if cfg.optimizer not in OPTIMIZERS:
        problems.append(f"--optimizer {cfg.optimizer!r}: valid: {', '.join(OPTIMIZERS)}")
    if cfg.scheduler not in SCHEDULERS:
        problems.append(f"--scheduler {cfg.scheduler!r}: valid: {', '.join(SCHEDULERS)}")
    if cfg.class_weights not in CLASS_WEIGHTS:
        problems.append(f"--class-weights {cfg.class_weights!r}: valid: {', '.join(CLASS_WEIGHTS)}")
    if cfg.augment not in PRESETS:
        problems.append(f"--augment {cfg.augment!r}: valid: {', '.join(PRESETS)}")
    if cfg.amp not in ("auto", "off", "bf16", "fp16"):
        problems.append(f"--amp {cfg.amp!r}: valid: auto, off, bf16, fp16")
    elif cfg.qat and cfg.amp in ("bf16", "fp16"):
        # autocast casts the rounded weights and activations to 16 bits inside the layers, moving them off the
        # INT8 grid that --qat simulates (nano under bf16: 46% of one layer's inputs off, by up to half a step)
        problems.append(f"--amp {cfg.amp} with --qat: {cfg.amp} autocast moves the INT8-rounded weights and "
                        "activations off the INT8 grid; leave --amp out (auto trains --qat in float32) or pass "
                        "--amp off")
    for name, lo in (("epochs", 1), ("batch_size", 1)):
        if getattr(cfg, name) < lo:
            problems.append(f"--{name.replace('_', '-')} must be at least {lo}")
    if cfg.lr <= 0:
        problems.append("--lr must be positive")
    if cfg.weight_decay < 0:
        problems.append("--weight-decay must be >= 0")
    if cfg.warmup_epochs < 0:
        problems.append("--warmup-epochs must be >= 0")
    for name, lo in (("max_steps_per_epoch", 0), ("val_every", 1), ("num_threads", 0)):
        if getattr(cfg, name) < lo:
            what = name if name == "val_every" else option_flag(name)  # val_every has no option of its own
            problems.append(f"{what} must be at least {lo}, got {getattr(cfg, name)}")
    if not 0 <= cfg.label_smoothing < 1:
        problems.append("--label-smoothing must be in [0, 1)")
    if cfg.mixup < 0 or cfg.cutmix < 0:
        problems.append("--mixup and --cutmix take a non-negative Beta alpha")
    if not 0 <= cfg.mix_prob <= 1:
        problems.append("--mix-prob is a probability, in [0, 1]")
    elif cfg.mix_prob != TrainConfig(data=cfg.data).mix_prob and not (cfg.mixup or cfg.cutmix):
        problems.append(f"--mix-prob {cfg.mix_prob} applies to mixed batches only: add --mixup or --cutmix")
    if not 0 <= cfg.ema < 1:
        problems.append("--ema takes a decay in [0, 1), e.g. 0.999")
    if cfg.patience < 0:
        problems.append("--patience must be >= 0")
    if not 0 <= cfg.distill_alpha <= 1:
        problems.append(f"--distill-alpha must be in [0, 1], got {cfg.distill_alpha}")
    if not MIN_TEMPERATURE <= cfg.distill_temperature <= MAX_TEMPERATURE:
        problems.append(f"--distill-temperature must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}] (softened logits "
                        f"beyond that under- or overflow in float32), got {cfg.distill_temperature}")
    if cfg.distill_tta and not cfg.distill:
        problems.append("--distill-tta needs at least one --distill teacher")
    defaults = TrainConfig(data=cfg.data)
    for name in ("distill_alpha", "distill_temperature"):
        if not cfg.distill and (name in given or getattr(cfg, name) != getattr(defaults, name)):
            problems.append(f"--{name.replace('_', '-')} applies to distillation only: add a --distill teacher")
    if cfg.scheduler in ("step", "none") and ("warmup_epochs" in given or cfg.warmup_epochs != defaults.warmup_epochs):
        problems.append(f"--warmup-epochs applies to the onecycle and cosine schedules only, not --scheduler "
                        f"{cfg.scheduler} (it would do nothing)")
    if len(cfg.distill) > 1:  # a teacher given twice (by name, path or a copy): before the data is loaded
        problems += repeated_teachers(cfg.distill)
    if cfg.teacher_runtime not in TEACHER_RUNTIMES:
        problems.append(f"--teacher-runtime {cfg.teacher_runtime!r}: valid: {', '.join(TEACHER_RUNTIMES)}")
    elif cfg.teacher_runtime != "auto" and not cfg.distill:
        problems.append(f"--teacher-runtime {cfg.teacher_runtime} applies to distillation only: add a --distill "
                        "teacher")
    if cfg.distill_targets not in DISTILL_TARGETS:
        problems.append(f"--distill-targets {cfg.distill_targets!r}: valid: {', '.join(DISTILL_TARGETS)}")
    elif cfg.distill_targets != "online" and not cfg.distill:
        problems.append(f"--distill-targets {cfg.distill_targets} needs at least one --distill teacher")
    if cfg.distill_targets == "replay" and cfg.augment == "none":
        problems.append("--distill-targets replay stores augmented views, but --augment is none: "
                        "use --distill-targets offline for un-augmented images")
    if cfg.distill_views is not None and cfg.distill_targets != "replay":
        problems.append("--distill-views applies to --distill-targets replay only")
    elif cfg.distill_views is not None and cfg.distill_views < 1:
        problems.append(f"--distill-views must be at least 1, got {cfg.distill_views}")
    if cfg.distill_cache is not None and cfg.distill_targets != "replay":
        problems.append("--distill-cache applies to --distill-targets replay only")
    if problems:
        raise TrainingError("bad training options:\n  " + "\n  ".join(problems))


def _model_problems(name: str, kwargs: dict) -> list[str]:
    """Whether ``name`` builds with ``kwargs`` and takes a 48x48 grayscale image (one forward pass of two blank
    images): kwargs that shrink the image to nothing failed in the first training step with a traceback."""
    import warnings

    from fer_edge.errors import ModelError
    from fer_edge.models import create_model, forward_problem

    try:
        with warnings.catch_warnings():  # torch warns about empty layers the problem below names
            warnings.simplefilter("ignore")
            model = create_model(name, num_classes=len(LABELS), **kwargs)
    except ModelError as e:
        return [f"--model-kwargs: {e}"]
    problem = forward_problem(model, num_classes=len(LABELS))
    if problem:
        return [f"--model {name} with --model-kwargs {json.dumps(kwargs)} cannot take a 48x48 grayscale image: "
                f"{problem}"]
    return []


@torch.no_grad()
def _single_value_norms(model: torch.nn.Module) -> str:
    """The BatchNorm layers of ``model`` (of any dimension) that a one-image training step gives one value per
    channel, described (``BatchNorm1d layers``, ``BatchNorm2d layers whose feature map is 1x1 (stages.4.1.bn)``);
    "" when there are none. In train mode such a layer raises "Expected more than 1 value per channel"; its input
    is the image count times the feature map's size, so a BatchNorm2d on a 1x1 map (kwargs that pool down to one
    pixel) needs two images as BatchNorm1d does. Found by the input shapes of one eval-mode pass of one blank image
    (eval mode leaves the running statistics as they are; each module's mode is restored afterwards)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    found: dict[str, list[str]] = {}  # description -> names of its layers, in forward order

    def hook(name: str):
        def record(module, args) -> None:
            spatial = tuple(args[0].shape[2:]) if args and torch.is_tensor(args[0]) else ()
            if math.prod(spatial) == 1:  # () for a BatchNorm1d on N x C: one value per image and channel
                kind = type(module).__name__
                what = f"{kind} layers" + (f" whose feature map is {'x'.join(map(str, spatial))}" if spatial else "")
                found.setdefault(what, []).append(name)
        return record

    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if not norms:
        return ""
    first = next(model.parameters(), None)
    x = torch.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE), device=first.device if first is not None else "cpu")
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in norms]
    try:
        with _eval_mode(model):
            model(x)
    except Exception:  # noqa: BLE001 - a model that cannot take the image: _model_problems said so already
        return ""
    finally:
        for h in handles:
            h.remove()
    return " and ".join(what + ("" if what.endswith(" layers") else f" ({', '.join(names[:3])}"
                                + (", ..." if len(names) > 3 else "") + ")")
                        for what, names in found.items())


def class_weight_tensor(labels: torch.Tensor, mode: str, num_classes: int) -> torch.Tensor | None:
    """``--class-weights``: each class's loss weight, inversely proportional to its count (``sqrt``: to the
    count's square root), scaled so that the weights of the training images average 1 (the mean loss scale).

    A class with no training image gets weight 0. (It got the weight of a class of one image, hundreds of times
    the others': label smoothing's term sums the weights of every class, so that alone pushed every image to
    the missing class, and the run predicted nothing else.) The other classes' weights are what they would be
    without the missing class."""
    if mode == "none":
        return None
    present = torch.bincount(labels.cpu(), minlength=num_classes).float()
    counts = present.clamp(min=1)
    w = counts.sum() / (num_classes * counts)
    if mode == "sqrt":
        w = w.sqrt()
    w = torch.where(present > 0, w, 0.0)
    return w / (w * present).sum() * present.sum()  # keep the mean loss scale


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    # the fused kernels update every parameter in one call (CPU and CUDA): the default for-each/per-tensor
    # implementations issue several operators per parameter tensor each step (see fer_edge.benchmarks.step_cost)
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                   for p in model.parameters()) else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


#: onecycle's warm-up is at most this share of the run; a ``--warmup-epochs`` not shorter than the run (which would
#: never reach --lr nor decay) is this share of it under cosine too (:func:`warmup_too_long`).
MAX_WARMUP_SHARE = 0.3


def warmup_too_long(cfg: TrainConfig) -> bool:
    """Whether ``--warmup-epochs`` is not shorter than the run: cosine then warms up over :data:`MAX_WARMUP_SHARE`
    of the run instead, with a warning (:func:`setup_warnings`), as onecycle does (whose help says so: it caps
    every warm-up there, so a one-epoch run with the default warm-up is not warned of)."""
    return cfg.warmup_epochs >= cfg.epochs


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        pct = min(MAX_WARMUP_SHARE, max(cfg.warmup_epochs / cfg.epochs, 0.01))
        if abs(pct * total - 1) < 1e-6:  # a one-step warm-up: OneCycleLR's first phase would span 0 steps (0/0)
            pct = 1.5 / total
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct)
    if cfg.scheduler == "cosine":
        # a warm-up as long as the run never reached --lr nor decayed: cut as onecycle's is (a shorter one is kept)
        warm_epochs = MAX_WARMUP_SHARE * cfg.epochs if warmup_too_long(cfg) else cfg.warmup_epochs
        warm = int(warm_epochs * steps_per_epoch)

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(opt, f)
    if cfg.scheduler == "step":
        step = max(1, int(total / 3))
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The training step's autocast dtype (None: float32). ``--qat`` trains in float32 whatever ``--amp`` says
    (:func:`validate_config` refuses bf16 and fp16 with it): a 16-bit cast of the INT8-rounded values moves them
    off the grid the simulation rounds to."""
    if cfg.amp == "off" or cfg.qat:
        return None
    if cfg.amp == "bf16":
        return torch.bfloat16
    if cfg.amp == "fp16":
        return torch.float16
    # auto: fp16 mixed precision on CUDA; bf16 on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX:
    # measured 2.1x the fp32 throughput for custom_cnn, see README); off otherwise (emulated bf16 is slow)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def setup_warnings(cfg: TrainConfig, train, val, device: torch.device) -> list[str]:
    """Settings that run but are probably not what the user meant."""
    out = []
    # the order-free digest where both have it: a copy is a copy whatever order its files or rows are in
    fps = [getattr(s, "fingerprint", None) or {} for s in (train, val)]
    key = "unordered_sha256" if all(fp.get("unordered_sha256") for fp in fps) else "sha256"
    digests = [fp.get(key) for fp in fps]
    if train.split == val.split:
        out.append(f"the validation split is the training split ({val.split}): the best epoch is chosen on "
                   "images the model trains on, so its accuracy says little about new faces")
    elif digests[0] is not None and digests[0] == digests[1]:  # a copy under another name (val/ a copy of train/)
        out.append(f"the validation split ({val.split}) holds the same images and labels as the training split "
                   f"({train.split}{', in another order' if fps[0].get('sha256') != fps[1].get('sha256') else ''}): "
                   "the best epoch is chosen on images the model trains on, so its accuracy says little about new "
                   "faces")
    missing = [LABELS[c] for c in range(len(LABELS)) if not bool((train.labels == c).any())]
    if missing:
        out.append(f"the training split has no {', '.join(missing)} images: the model cannot learn "
                   f"{'that class' if len(missing) == 1 else 'those classes'}")
    if cfg.scheduler == "cosine" and warmup_too_long(cfg):
        out.append(f"--warmup-epochs {cfg.warmup_epochs:g} is not shorter than the run (--epochs {cfg.epochs}), so "
                   f"the learning rate would never reach --lr nor decay: cosine warms up over the first "
                   f"{MAX_WARMUP_SHARE:.0%} of the run instead, as onecycle does")
    if cfg.amp == "fp16" and device.type == "cpu":
        out.append("--amp fp16 on the CPU runs emulated half precision, typically many times slower than "
                   "--amp bf16 (on CPUs with native bf16) or --amp off")
    return out


def cpu_has_native_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


#: The distillation temperatures taken: logits divided by less than 0.01 or (after the T^2 loss scaling) more
#: than 100 leave float32's useful range, and the run diverged with advice about --lr.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0

#: Files of a run directory: a folder holding any of them is a run that a new one must not overwrite.
RUN_FILES = ("last.pt", "best.pt", "metrics.json", "history.csv")
#: The lock file a run holds in its folder while a process writes it (:meth:`Trainer._lock_out`).
LOCK_FILE = ".fer-edge-train.lock"
#: What a run's ``--out`` inside its image-folder ``--data`` would do (:func:`fer_edge.utils.check_not_in_data`).
TRAIN_IN_DATA = ("the run's files would become part of that data set: in a class folder every later command on it "
                 "(this run's --resume among them) would read its curves.png and confusion_matrix.png as faces of "
                 "that class, and elsewhere its folder as a split or class")

_WANDB_MISSING = "--wandb needs the wandb package: pip install 'fer-edge[wandb]'"

#: TrainConfig fields that ``--resume`` lets differ from the run's: where and how fast it runs (``data`` is
#: compared by the images' fingerprint instead: the same file by another path, or a copy, is the same data).
RESUME_FREE = ("out", "data", "device", "amp", "channels_last", "num_threads", "wandb", "teacher_runtime",
               "distill_cache")
#: Fields ``--resume`` compares by the split they name (the run's split, typed out or by an alias, is the run's;
#: left out, by the default it resolves to once the data is loaded), then by the loaded split's fingerprint.
RESUME_SPLITS = ("split", "val_split")


def _same_path(a: str, b: str) -> bool:
    try:
        return a == b or Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return a == b


def _same_setting(name: str, saved, now) -> bool:
    """Whether a resumed run's option is the run's: file options (``--init``, ``--distill``) by the file they
    name, so a relative path given from another folder still matches; the others by value."""
    if name == "init" and saved and now:
        return _same_path(saved, now)
    if name == "distill" and isinstance(saved, list) and isinstance(now, list):
        return len(saved) == len(now) and all(_same_path(a, b) for a, b in zip(saved, now))
    if name == "distill_views":  # an older run recorded None for the default number of views
        from fer_edge.training.replay import DEFAULT_REPLAY_VIEWS

        return (saved or DEFAULT_REPLAY_VIEWS) == (now or DEFAULT_REPLAY_VIEWS)
    return saved == now


def _split_names(split: str | None) -> set[str]:
    """``split`` and the names that stand for it (:data:`fer_edge.data.loading.SPLIT_ALIASES`, either form)."""
    from fer_edge.data.loading import SPLIT_ALIASES

    if split is None:
        return set()
    names = {split}
    for table in SPLIT_ALIASES.values():
        names |= {alias for alias, targets in table.items() if split in targets} | set(table.get(split, ()))
    return names


def same_data(saved: dict, now: dict) -> bool:
    """Whether a split's fingerprint is the one a checkpoint recorded, for ``--resume`` and the leaderboard's reuse
    of a run: the same images and labels in the same order (``sha256``: a seeded run shuffles by position, so a
    reordered copy, such as the CSV's ``Training`` beside ``images/train``, trains otherwise), whatever the split is
    called; a checkpoint without the hash is judged on the split name (or an alias of it) and count.
    :func:`same_images` is the order-free question the training-data notes ask."""
    if "sha256" in saved:
        return saved["sha256"] == now.get("sha256") and saved.get("n", now.get("n")) == now.get("n")
    if "split" in saved and now.get("split") not in _split_names(saved["split"]):
        return False
    return "n" not in saved or saved["n"] == now.get("n")


def same_images(saved: dict, now: dict) -> bool:
    """Whether a split holds the images and labels a checkpoint recorded, in any order: what eval's and soup's
    "training data" notes and soup's ingredients check ask (a CSV and an image folder order the same images
    differently: FER2013's ``Training`` and ``images/train``). The order-free ``unordered_sha256`` decides where
    both record it; a record from before it existed (the shipped weights: an image folder's ``train``) is judged
    by :func:`same_data` in its own format and, in the other format, on the split name (or an alias of it) and
    count."""
    if saved.get("unordered_sha256") and now.get("unordered_sha256"):
        return saved["unordered_sha256"] == now["unordered_sha256"] and saved.get("n") == now.get("n")
    if ("sha256" in saved and saved["sha256"] != now.get("sha256") and saved.get("format") and now.get("format")
            and saved["format"] != now["format"]):
        saved = {k: v for k, v in saved.items() if k != "sha256"}  # judged as a record without the hash
    return same_data(saved, now)


def data_fingerprint(split) -> dict:
    fp = dict(getattr(split, "fingerprint", {}) or {})
    fp.setdefault("source", str(split.source))
    fp.setdefault("split", split.split)
    fp.setdefault("n", len(split.labels))
    return fp


def load_init_weights(model: torch.nn.Module, cfg: TrainConfig, labels: list[str]) -> Normalization:
    """``--init``: copy a checkpoint's weights into ``model``; returns the normalisation they were trained with."""
    try:
        ck = load_checkpoint(cfg.init)
    except FerEdgeError as e:
        raise TrainingError(f"--init: {e}") from None
    problems = []
    if ck.model_name != cfg.model:
        problems.append(f"it holds {ck.model_name!r}, not {cfg.model!r}")
    if ck.labels != labels:
        problems.append(f"its labels {ck.labels} differ from {labels}")
    broken = non_finite_tensors(ck.state_dict)
    if broken:  # a diverged run's weights: training from them only ends in "diverged" an epoch later
        problems.append(f"{len(broken)} of its tensors hold inf or NaN (e.g. {broken[0]}): the weights of a run "
                        "that diverged; give a checkpoint from before that")
    if not problems:
        mismatch = state_dict_mismatch(model.state_dict(), ck.state_dict)
        if mismatch:
            problems.append(
                f"its weights do not fit {cfg.model} with --model-kwargs {json.dumps(cfg.model_kwargs)} "
                f"({mismatch}); "
                f"it was trained with --model-kwargs {json.dumps(ck.model_kwargs)}"
            )
    if problems:
        raise TrainingError(f"--init {cfg.init}: " + "; ".join(problems))
    model.load_state_dict(ck.state_dict)
    # finite tensors can still give NaN (a negative BatchNorm running_var, which eval refuses): tried once on the
    # teachers' probe batch, so the run does not "succeed" with val_loss nan and an accuracy of NaN logits
    if not _finite_outputs(model, ck.normalization):
        raise TrainingError(f"--init {cfg.init}: its outputs on a probe batch are not finite numbers (NaN or inf) "
                            "although its tensors are: its weights are damaged (e.g. a negative BatchNorm "
                            "variance, or weights that overflow); give another checkpoint")
    return ck.normalization


@torch.no_grad()
def _finite_outputs(model: torch.nn.Module, norm: Normalization) -> bool:
    """Whether ``model``'s logits on the probe batch the ``--distill`` teachers are tried on
    (:func:`fer_edge.training.teachers._probe_images`) are finite; in eval mode, which leaves the BatchNorm
    statistics as they are (each module's mode is restored afterwards)."""
    from fer_edge.training.teachers import _probe_images

    first = next(model.parameters(), None)
    x = _probe_images().to(first.device if first is not None else "cpu")
    with _eval_mode(model):
        return bool(torch.isfinite(model((x - norm.mean) / norm.std)).all())


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """``model`` in eval mode for a probe (its BatchNorm statistics left as they are), each module's own mode put
    back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.train(training)


def ema_decay(decay: float, n: int) -> float:
    """The EMA decay after ``n`` updates: min(decay, (1 + n) / (10 + n)), a ramp as TF and timm use.

    Without the ramp the random initial weights keep a weight of decay**n: 26% after 670
    steps at 0.998, which made early-epoch EMA models (and early stopping on them) useless.
    """
    return min(decay, (1.0 + n) / (10.0 + n))


class EmaUpdater:
    """Updates a ``torch.optim.swa_utils.AveragedModel(model, use_buffers=True)`` as an EMA with
    :func:`ema_decay`'s ramp, in one ``_foreach_lerp_`` over tensor lists gathered once.

    The same arithmetic as ``AveragedModel.update_parameters`` with a ``multi_avg_fn`` (the first update copies,
    integer buffers such as BatchNorm's ``num_batches_tracked`` are copied), and the same state dict, but
    without its per-step cost: it walks and detaches every tensor each step and reads ``n_averaged`` back from
    the device two times, which on a GPU makes every step wait for the one before.
    """

    def __init__(self, ema: torch.nn.Module, model: torch.nn.Module, decay: float):
        self.ema, self.decay = ema, decay
        pairs = list(zip([*ema.module.parameters(), *ema.module.buffers()], [*model.parameters(), *model.buffers()]))
        self.float_ema = [e for e, _ in pairs if e.is_floating_point()]
        self.float_model = [p for e, p in pairs if e.is_floating_point()]
        self.int_ema = [e for e, _ in pairs if not e.is_floating_point()]
        self.int_model = [p for e, p in pairs if not e.is_floating_point()]
        self.n = int(ema.n_averaged)  # read once (resume restores it); kept on the host from here on

    @torch.no_grad()
    def update(self) -> None:
        if self.n == 0:
            torch._foreach_copy_(self.float_ema, self.float_model)
        else:
            torch._foreach_lerp_(self.float_ema, self.float_model, 1.0 - ema_decay(self.decay, self.n))
        if self.int_ema:
            torch._foreach_copy_(self.int_ema, self.int_model)
        self.n += 1
        self.ema.n_averaged.fill_(self.n)  # for the checkpoint's state dict; no read back


# --- distributed ----------------------------------------------------------------
def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of torch's RNG at the start of epoch ``epoch`` (0-based) of a run with ``--seed seed``: it draws
    the epoch's shuffle of the training split, shared by every process of a torchrun (each takes its share of
    every batch), then rank 0's augmentation, replay views and MixUp/CutMix parameters."""
    return seed * 100_003 + epoch


def augment_seed(seed: int, epoch: int, rank: int) -> int | None:
    """The seed that process ``rank`` of a torchrun reseeds torch's RNG with after drawing the epoch's shared
    shuffle (:func:`epoch_seed`), so that its augmentation, replay views and MixUp/CutMix parameters are its own:
    with one stream for all, every rank drew the same flips, angles and erasing for its different images. None
    for rank 0, which goes on drawing from the shuffle's stream, so that a single-process run draws what it always
    did; per epoch like the shuffle, so ``--resume`` repeats every rank's draws."""
    if rank == 0:
        return None
    import hashlib

    digest = hashlib.sha256(f"fer-edge augment {seed} {epoch} {rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # under 2**63: torch.manual_seed takes it on every device


class _Dist:
    """torchrun support: DDP when WORLD_SIZE > 1, a no-op otherwise."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        return idx[self.rank :: self.world] if self.enabled else idx

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t)
        return t

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def resolve_checkpoint_names(cfg: TrainConfig) -> TrainConfig:
    """``--init`` and ``--distill`` take shipped names (``small``, ``nano``) as well as paths: the config records
    the file each name stands for, so the run's recipe names the weights it used. ``--data``, ``--init`` and
    ``--distill`` are recorded as absolute paths, so that ``--resume`` from another folder finds them the same."""
    from dataclasses import replace

    from fer_edge.weights import resolve_checkpoint

    def checkpoint_file(spec: str, option: str) -> str:
        try:
            path = resolve_checkpoint(spec)
        except FerEdgeError as e:
            raise TrainingError(f"{option}: {e}") from None
        if not path.is_file():
            raise TrainingError(f"{option} {spec}: a folder, not a checkpoint file (.pt)")
        return str(path.resolve())  # absolute: --resume from another folder compares the same file

    from fer_edge.training.replay import DEFAULT_REPLAY_VIEWS
    from fer_edge.training.teachers import resolve_teacher

    return replace(cfg, data=str(Path(cfg.data).resolve()),
                   init=checkpoint_file(cfg.init, "--init") if cfg.init is not None else None,
                   distill=[str(resolve_teacher(t).resolve()) for t in cfg.distill],
                   distill_cache=str(Path(cfg.distill_cache).resolve()) if cfg.distill_cache else cfg.distill_cache,
                   distill_views=(cfg.distill_views or DEFAULT_REPLAY_VIEWS) if cfg.distill_targets == "replay"
                   else cfg.distill_views)


def input_files_sha256(cfg: TrainConfig) -> dict:
    """The SHA-256 of the files a run learns from besides its data (``--init``, each ``--distill`` teacher), so
    ``--resume`` can tell a teacher replaced at the same path (a shipped ``small`` after an upgrade)."""
    from fer_edge.utils import sha256_path

    return {"init": sha256_path(cfg.init) if cfg.init else None,
            "distill": [sha256_path(t) for t in cfg.distill]}


# --- evaluation -------------------------------------------------------------------
@torch.no_grad()
def predict_logits(model: torch.nn.Module, images_u8: torch.Tensor, norm: Normalization, device: torch.device,
                   batch_size: int = 512, tta: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Logits for uint8 N x 48 x 48 images (on any device), batched; ``tta`` averages with the mirror."""
    model.eval()
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = images_u8[i : i + batch_size].to(device, non_blocking=True).float().unsqueeze(1)
        x = (x / 255.0 - norm.mean) / norm.std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        if tta:
            logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
        out.append(logits.cpu())
    return torch.cat(out) if out else torch.zeros(0, len(LABELS))


# --- the loop ---------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig, progress: bool = True, console=None, quiet: bool = False,
                 resume_hint: str | None = "continue with --resume"):
        validate_config(cfg)
        cfg = resolve_checkpoint_names(cfg)
        self.cfg = cfg
        self.progress = progress
        # what the user runs to go on after an interrupt; None: the caller says it (no "interrupted" line here)
        self.resume_hint = resume_hint
        self.out = Path(cfg.out)
        self.teacher_targets_seconds: float | None = None
        self._created_out = False  # whether this run made cfg.out (a failed --wandb start removes it again)
        self._lock = None  # the open lock file while this process writes the run (see _lock_out)
        self._plots_warned: set[str] = set()  # the plots whose failure was told (see _plot): once is enough
        self.device = resolve_device(cfg.device)
        self.dist = _Dist(self.device)
        if console is None:
            from fer_edge.console import WideConsole

            console = WideConsole(stderr=True, quiet=quiet)  # (COLUMNS=0, as some containers set: unset, not 0)
        self.console = console

    def log(self, msg: str) -> None:
        if self.dist.main:
            # soft_wrap: a log line is never broken at the console's width (80 columns off a terminal), so one
            # epoch's figures stay on one line of a log file
            self.console.print(msg, soft_wrap=True)

    def _restore_best(self, last, state: dict) -> str | None:
        """On resume, check that the run's best.pt can still be read. When it cannot (a truncated file, a deleted
        one) and last.pt holds the best epoch, best.pt is written again from last.pt, with a warning.
        Returns why best.pt is lost when it cannot be restored (the caller says what that means), else None."""
        best, epoch = self.out / "best.pt", int(state["best_epoch"])
        if epoch <= 0 or (why := _best_problem(best, epoch, last.train_config)) is None:
            return None
        row = next((r for r in state["history"] if r.get("epoch") == epoch), {})
        if epoch != int(state["epoch"]) or "val_accuracy" not in row:
            return why
        if self.dist.main:
            with interrupts_deferred():
                save_checkpoint(best, {
                    **{k: v for k, v in last.raw.items() if k not in ("resume", "metrics")},
                    "metrics": {"val_accuracy": row["val_accuracy"], "val_macro_f1": row.get("val_macro_f1"),
                                "val_split": (last.data.get("val") or {}).get("split"), "epoch": epoch,
                                "params": sum(p.numel() for p in last.build_model().parameters())},
                })
        self.log(f"[yellow]warning: {why}; written again from {self.out / 'last.pt'}, which holds the same epoch "
                 f"{epoch}[/]")
        return None

    def _load_data(self):
        from fer_edge.data import default_train_split, default_val_split, load_split

        cfg = self.cfg
        train_split = default_train_split(cfg.data) if cfg.split is None else cfg.split
        # never a test split by default (train/ + test/ folders are refused): the best epoch is selected on it
        val_split = (default_val_split(cfg.data, options="fer-edge train --val-split") if cfg.val_split is None
                     else cfg.val_split)
        train = load_split(cfg.data, train_split, progress=self.progress and self.dist.main)
        val = load_split(cfg.data, val_split, progress=self.progress and self.dist.main)
        return train, val

    def run(self, resume: bool = False) -> TrainResult:
        try:
            return self._run(resume)
        finally:  # a --resume refused after taking the run's lock (other options, other data) lets it go
            self._leave_out()

    def _run(self, resume: bool) -> TrainResult:
        cfg, device = self.cfg, self.device
        from fer_edge.models import count_params, create_model, resolved_model_kwargs

        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        check_writable_dir(self.out, "--out", TrainingError)
        check_not_in_data(self.out, [("given as --data", cfg.data)], TrainingError, TRAIN_IN_DATA)
        if cfg.wandb and self.dist.main:  # before the data is loaded, not after (the login is checked later)
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise TrainingError(_WANDB_MISSING) from None
        if cfg.distill_cache:  # before minutes of labelling, not after
            check_output_file(cfg.distill_cache, "--distill-cache", TrainingError, example="replay.pt")
        last_path = self.out / "last.pt"
        state = None
        if resume:
            if not last_path.is_file():
                held = [n for n in RUN_FILES if (self.out / n).exists()]
                if held:  # a run without its resume state: a new run there would be refused too
                    raise TrainingError(f"--resume: {last_path} does not exist, so the run in {self.out} "
                                        f"({', '.join(held)}) cannot be continued; {_init_advice(self.out)}start a "
                                        "new run in another --out, or delete the folder (fer-edge train never "
                                        "overwrites a run)")
                raise TrainingError(f"--resume: {last_path} does not exist; start without --resume")
            try:
                ck = load_checkpoint(last_path)
            except CheckpointError as e:
                raise TrainingError(f"--resume cannot continue the run in {self.out}: {e}; "
                                    f"{_init_advice(self.out)}start a new run in another --out") from None
            # the lock first: a --resume refused (another process is writing the run, other options) changes
            # nothing in the folder, where removing a live run's temporary files made that run fail
            self._lock_out(ck)
            if self.dist.main:  # (the lock above is rank 0's: another rank must not remove a live run's files)
                _remove_debris(self.out)
            saved = ck.train_config
            now = cfg.to_dict()
            # a field the run's fer-edge did not have yet is that field's default (what the run trained with)
            saved = {**TrainConfig(data=cfg.data).to_dict(), **saved}
            # a split is the run's when it names the run's split or an alias of it; left out, it is checked once
            # the data is loaded (the default it resolves to), as is every split's fingerprint
            recorded = {"split": (ck.data.get("train") or {}).get("split"),
                        "val_split": (ck.data.get("val") or {}).get("split")}
            diffs = [k for k in now if k not in RESUME_FREE and not _same_setting(k, saved[k], now[k])
                     and not (k in RESUME_SPLITS and (now[k] is None or now[k] in _split_names(recorded[k])))]
            fingerprinted = all("sha256" in (ck.data.get(k) or {}) for k in ("train", "val"))
            if not fingerprinted and not _same_path(saved["data"], cfg.data):
                diffs.insert(0, "data")  # an older run without fingerprints is judged on the data's path
            if diffs:
                raise TrainingError(
                    f"--resume: options differ from the run in {self.out} (repeat the options it was started "
                    "with; only where and how fast it runs may change: "
                    + ", ".join(option_flag(k) for k in RESUME_FREE if k not in ("out", "data"))
                    + "): " + ", ".join(f"{option_flag(k)} was {saved[k]!r}, now {now[k]!r}" for k in diffs)
                )
            state = ck.raw.get("resume")
            if not state:
                raise TrainingError(f"--resume: {last_path} has no resume state")
            saved_files = ck.raw.get("input_files") or {}
            if saved_files:  # a run written before the files were hashed is judged on their paths only
                now_files = input_files_sha256(cfg)
                changed = ([f"--init {cfg.init}"] if saved_files.get("init") != now_files["init"] else []) + [
                    f"--distill {t}" for t, a, b in zip(cfg.distill, saved_files.get("distill") or [],
                                                        now_files["distill"]) if a != b]
                if changed:
                    raise TrainingError(
                        f"--resume: {', '.join(changed)} changed since the run in {self.out} began (another file "
                        "at the same path: its SHA-256 differs); resuming would learn from other weights. Start a "
                        "new run in another --out, or put the original file back")
        elif self.dist.main and (held := [n for n in RUN_FILES if (self.out / n).exists()]):
            finished = run_finished(self.out)
            advice = ("" if "last.pt" not in held
                      else f"it is finished: to train on from it, pass --init {self.out / 'best.pt'} with another "
                           "--out, or " if finished
                      else _resume_advice(self.out))
            raise TrainingError(
                f"{self.out} already holds a run ({', '.join(held)}); {advice}"
                "choose another --out (fer-edge train never overwrites a run)"
            )

        train, val = self._load_data()
        if len(train.labels) == 0 or len(val.labels) == 0:
            raise TrainingError("empty training or validation split")
        if state is not None:  # the images themselves, not only the path, must be the run's
            splits = (("train", "training", "--split", train), ("val", "validation", "--val-split", val))
            # another split of the data (an alias of the run's is the run's: the data itself is checked next)
            other = [f"{option} names split {split.split!r}, the run's was {ck.data[key]['split']!r}"
                     for key, _, option, split in splits
                     if (ck.data.get(key) or {}).get("split") is not None
                     and split.split not in _split_names(ck.data[key]["split"])]
            if other:
                raise TrainingError(f"--resume: options differ from the run in {self.out}: {'; '.join(other)}")
            changed = [f"{what} split {split.split!r}" for key, what, _, split in splits
                       if not same_data(ck.data.get(key) or {}, data_fingerprint(split))]
            if changed:
                began = (ck.data.get("train") or {}).get("source")
                began = f" ({began})" if began and not _same_path(began, cfg.data) else ""
                raise TrainingError(
                    f"--resume: the {' and the '.join(changed)} of {cfg.data} "
                    f"{'differs' if len(changed) == 1 else 'differ'} from the data the run in {self.out} began "
                    f"on{began} (images, labels or count changed); start a new run in another --out")
            done = int(state["epoch"])
            early = cfg.patience > 0 and int(state["bad_epochs"]) >= cfg.patience
            if done >= cfg.epochs or early:
                why = (f"it stopped early at epoch {done} (no val improvement in {cfg.patience} epochs)" if early
                       else f"all {cfg.epochs} epochs are done")
                lost = self._restore_best(ck, state)
                if lost is not None:
                    self.log(f"[yellow]warning: {lost}: the weights of the best epoch {int(state['best_epoch'])} "
                             f"are lost; {last_path} holds the last epoch's ({done}): pass --init {last_path} with "
                             "another --out to train on from them[/]")
                else:
                    self._mend_best_report(state, val)
                recorded = _read_metrics(self.out / "metrics.json")
                if self.dist.main and (recorded.get("epochs_run") != done or recorded.get("finished") is not True):
                    # a process killed after the last epoch's last.pt left these an epoch behind
                    with interrupts_deferred():
                        self._write_history(list(state["history"]))
                        self._write_metrics(list(state["history"]), float(state["best_accuracy"]),
                                            int(state["best_epoch"]), count_params(ck.build_model()), device, True)
                self.log(f"nothing to resume: {self.out} is finished ({why}); best val accuracy "
                         f"{float(state['best_accuracy']):.4f} at epoch {int(state['best_epoch'])}, "
                         + (f"in {self.out / 'best.pt'}" if lost is None else "whose weights are lost"))
                self.dist.close()
                history = list(state["history"])
                return TrainResult(self.out, float(state["best_accuracy"]), int(state["best_epoch"]), len(history),
                                   history, early, None)
        for warning in setup_warnings(cfg, train, val, device):
            self.log(f"[yellow]warning: {warning}[/]")
        labels = list(LABELS)
        x_train = train.images.to(device)
        y_train = train.labels.to(device)
        # normalisation measured on the training split (stored in every checkpoint and artifact)
        if state is not None:
            norm = Normalization.from_dict(state["normalization"])
        else:
            f = train.images.float() / 255.0
            norm = Normalization(round(float(f.mean()), 4), round(float(f.std()), 4))

        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=len(labels), **cfg.model_kwargs)
        model_kwargs = resolved_model_kwargs(model, cfg.model_kwargs)  # defaults included: survives their change
        # a step never gets fewer: the last partial batch of an epoch is dropped (see ``steps`` below), and a split
        # smaller than --batch-size is one step of the whole split, shared out by the processes
        images_a_step = min(cfg.batch_size, len(x_train)) // self.dist.world
        if images_a_step < 2 and (single := _single_value_norms(model)):
            # what would give a step 2 images: a larger batch only while the split holds more images than it
            fix = ("raise --batch-size" if cfg.batch_size < len(x_train)
                   else f"the training split needs at least {2 * self.dist.world} images"
                   + (" (or fewer processes)" if self.dist.world > 1 else ""))
            raise TrainingError(
                f"{cfg.model} has {single}, which need at least 2 images a training step, but a step "
                f"gets {images_a_step} (--batch-size {cfg.batch_size}, {len(x_train)} training images"
                + (f", {self.dist.world} processes" if self.dist.world > 1 else "") + f"): {fix}")
        if cfg.init and state is None:
            norm = load_init_weights(model, cfg, labels)
        model = model.to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        n_params = count_params(model)
        opt = make_optimizer(cfg, model)
        per_rank_batch = max(1, cfg.batch_size // self.dist.world)
        steps = len(x_train) // cfg.batch_size  # drop the last partial batch: steady BN statistics
        if steps == 0:
            steps = 1
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        sched = make_scheduler(cfg, opt, steps)
        amp_dtype = autocast_dtype(cfg, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        cw = class_weight_tensor(train.labels, cfg.class_weights, len(labels))
        cw = cw.to(device) if cw is not None else None
        aug = PRESETS[cfg.augment]

        ema = None
        if cfg.ema > 0:
            from torch.optim.swa_utils import AveragedModel

            ema = AveragedModel(model, use_buffers=True)  # updated by EmaUpdater, below

        teachers = []
        if cfg.distill:
            runtime = resolve_teacher_runtime(cfg.teacher_runtime, device)
            teachers = load_teachers(cfg.distill, labels, device, runtime, channels_last=cfg.channels_last,
                                     threads=cfg.num_threads)
            self.log(f"{len(teachers)} teacher(s) in {runtime} (--teacher-runtime {cfg.teacher_runtime})")
        offline_probs = replay = None
        try:
            if teachers and cfg.distill_targets == "offline":
                offline_probs = self._offline_targets(teachers, x_train, cfg, amp_dtype)
            if teachers and cfg.distill_targets == "replay":
                replay = self._replay_targets(teachers, x_train, cfg, aug, amp_dtype)
        except KeyboardInterrupt as e:
            where = (f"the last finished epoch is still in {last_path}: {self.resume_hint}" if state is not None
                     else "no epoch ran, so there is nothing to resume")
            if self.resume_hint is not None:
                self.log(f"[yellow]interrupted: the teachers were labelling the training images; {where}[/]")
                mark_reported(e)
            raise
        input_files = input_files_sha256(cfg)

        ddp_model = model
        if self.dist.enabled:
            ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )

        qsim = None
        if cfg.qat:
            from fer_edge.training.qat import QuantSim

            example = (x_train[:8].unsqueeze(1).float() / 255.0 - norm.mean) / norm.std
            if cfg.channels_last:
                example = example.contiguous(memory_format=torch.channels_last)
            qsim = QuantSim(ddp_model, model, example)
            self.log(f"{qsim.describe()}, trained in float32 (no autocast: a 16-bit cast would move the rounded "
                     "values off the INT8 grid)")

        history: list[dict] = []
        best_acc, best_epoch, start_epoch, bad_epochs = -1.0, 0, 0, 0
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            if qsim is not None and state.get("qat") is not None:
                qsim.load_state_dict(state["qat"])
            if broken := _non_finite_tensors(model, ema.module if ema is not None else None):
                raise TrainingError(
                    f"--resume: {last_path} holds inf or NaN in {_count_tensors(broken)} (e.g. {broken[0]}): the run "
                    "had diverged when it was saved (an earlier fer-edge saved the BatchNorm statistics an fp16 "
                    "overflow had broken); continuing cannot mend it. Start a new run in "
                    f"another --out, from scratch or with --init from a checkpoint saved before (e.g. "
                    f"{self.out / 'best.pt'} if it is finite)")
            history = list(state["history"])
            best_acc, best_epoch = float(state["best_accuracy"]), int(state["best_epoch"])
            if (lost := self._restore_best(ck, state)) is not None:
                self.log(f"[yellow]warning: {lost}: the weights of the best epoch {best_epoch} (val accuracy "
                         f"{best_acc:.4f}) are lost; the best is counted again from here, so the next validated "
                         "epoch writes a new best.pt[/]")
                best_acc, best_epoch = -1.0, 0
            else:
                self._mend_best_report(state, val)
            bad_epochs = int(state["bad_epochs"])
            start_epoch = int(state["epoch"])
            self.log(f"resuming {self.out} at epoch {start_epoch + 1}/{cfg.epochs}")
        else:
            self._created_out = not self.out.exists()
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a folder the checks let by that the system will not create (under /proc)
                raise TrainingError(f"--out {self.out}: cannot create the folder ({e.strerror or e}); "
                                    "choose another --out") from None
        if state is None:
            self._lock_out(None)

        self.log(
            f"[bold]{cfg.model}[/] ({n_params:,} params) on {device}, "
            f"train {train.split} n={len(x_train):,}, val {val.split} n={len(val.labels):,}, "
            f"normalization mean={norm.mean} std={norm.std}"
        )
        wandb_run = self._wandb_init(n_params) if self.dist.main else None
        fingerprint = {"train": data_fingerprint(train), "val": data_fingerprint(val)}
        stopped_early = False
        eval_model = ema.module if ema is not None else model
        ema_updater = EmaUpdater(ema, model, cfg.ema) if ema is not None else None

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        prog = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f} {task.fields[ips]:.0f} img/s"),
            TimeRemainingColumn(), console=self.console, disable=not (self.progress and self.dist.main),
            transient=True,
        )
        try:
            with prog:
                for epoch in range(start_epoch, cfg.epochs):
                    torch.manual_seed(epoch_seed(cfg.seed, epoch))
                    t0 = time.perf_counter()
                    perm = torch.randperm(len(x_train), device=device)  # the same on every rank: it splits the batches
                    if (own := augment_seed(cfg.seed, epoch, self.dist.rank)) is not None:
                        torch.manual_seed(own)  # this rank's own augmentation, replay views and mixing
                    task = prog.add_task("train", total=steps, epoch=f"{epoch + 1}/{cfg.epochs}", loss=0.0, acc=0.0,
                                         ips=0.0)
                    ddp_model.train()
                    loss_sum = torch.zeros((), device=device)
                    counted = torch.zeros((), device=device)  # images whose step's loss is in loss_sum
                    skipped = torch.zeros((), device=device)  # fp16 steps the gradient scaler skipped
                    correct = torch.zeros((), device=device)
                    seen = 0
                    for step in range(steps):
                        idx = self.dist.shard(perm[step * cfg.batch_size : (step + 1) * cfg.batch_size])
                        yb = y_train[idx]
                        looked_up = None  # offline/replay: the teachers' stored answer for each image of xb
                        if replay is not None:  # a stored augmented view per image, and its targets
                            xb, looked_up = replay.batch(idx)
                        else:
                            xb = augment_batch(x_train[idx].unsqueeze(1).float().div_(255.0), aug)
                            if offline_probs is not None:
                                looked_up = offline_probs[idx]
                        xb, ya, yb2, lam, partner = mix_batch(xb, yb, cfg.mixup, cfg.cutmix, cfg.mix_prob)
                        xn = (xb - norm.mean) / norm.std
                        if cfg.channels_last:
                            xn = xn.contiguous(memory_format=torch.channels_last)
                        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                            logits = qsim(xn) if qsim is not None else ddp_model(xn)
                            loss = lam * F.cross_entropy(logits, ya, weight=cw, label_smoothing=cfg.label_smoothing)
                            if lam < 1.0:
                                loss = loss + (1 - lam) * F.cross_entropy(
                                    logits, yb2, weight=cw, label_smoothing=cfg.label_smoothing
                                )
                            if teachers:
                                temp = cfg.distill_temperature
                                if looked_up is not None:
                                    tprob = looked_up
                                    if lam < 1.0:
                                        tprob = lam * tprob + (1 - lam) * tprob[partner]
                                else:
                                    tprob = teacher_probs(teachers, xb, temp, cfg.distill_tta)
                                kd = F.kl_div(
                                    F.log_softmax(logits.float() / temp, 1), tprob, reduction="batchmean",
                                ) * temp * temp
                                loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
                        opt.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                        step_lr = opt.param_groups[0]["lr"]  # the LR this step used (history's lr: the last one's)
                        sched.step()
                        if qsim is not None and self.dist.enabled:
                            qsim.average_ranges(self.dist.sum, self.dist.world)
                        if ema_updater is not None:
                            ema_updater.update()
                        bs = len(idx)
                        if scaler.is_enabled():
                            # an fp16 overflow gives a non-finite loss now and then: the scaler skips that step
                            # and lowers its scale (the weights are untouched), so it is left out of the epoch's
                            # loss instead of making the whole epoch look diverged
                            finite = torch.isfinite(loss.detach())
                            loss_sum += torch.where(finite, loss.detach() * bs, 0.0)
                            counted += finite * bs
                            skipped += ~finite
                        else:
                            loss_sum += loss.detach() * bs
                            counted += bs
                        correct += (logits.detach().argmax(1) == ya).sum()
                        seen += bs
                        if step % 10 == 0 or step == steps - 1:
                            el = time.perf_counter() - t0
                            prog.update(task, completed=step + 1, loss=float(loss_sum / counted.clamp(min=1)),
                                        acc=float(correct) / seen, ips=seen * self.dist.world / max(el, 1e-9))
                    prog.remove_task(task)
                    totals = self.dist.sum(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device),
                                                        counted, skipped]))
                    train_loss = float(totals[0] / totals[3]) if totals[3] > 0 else math.nan
                    n_skipped = int(totals[4])
                    # a skipped fp16 step leaves the weights as they were, but not BatchNorm's running statistics,
                    # which the forward pass updated: an overflow there makes them inf/NaN, so they are checked too
                    broken = ([] if not math.isfinite(train_loss) else
                              _non_finite_tensors(model, ema.module if ema is not None else None))
                    if not math.isfinite(train_loss) or broken:
                        resumable = epoch > start_epoch or state is not None
                        kept = (f"this epoch was not saved; {last_path} holds epoch {epoch}" if resumable
                                else "nothing was saved")
                        what = (f"the training loss of epoch {epoch + 1} is {train_loss}" if not broken else
                                f"after epoch {epoch + 1}, {_count_tensors(broken)} hold inf or NaN "
                                f"(e.g. {broken[0]})")
                        fp16 = ""
                        if n_skipped:
                            fp16 = ("Every step's fp16 loss was non-finite" if not math.isfinite(train_loss) else
                                    f"{n_skipped} fp16 step(s) overflowed, and the gradient scaler, which skips "
                                    "their weight updates, does not undo what their forward pass wrote into "
                                    "BatchNorm's running statistics")
                            fp16 += (f": the same command with --resume and --amp bf16 (or --amp off) continues "
                                     f"from epoch {epoch}. Otherwise " if resumable
                                     else ": try --amp bf16 or --amp off. Otherwise ")
                        raise TrainingError(
                            f"training diverged: {what}; {kept}. {fp16}{'l' if fp16 else 'L'}ower --lr (now "
                            f"{cfg.lr:g}) or check the other options, and start a new run"
                            + (" in another --out" if epoch > 0 else ""))
                    train_acc = float(totals[1] / totals[2])
                    epoch_s = time.perf_counter() - t0

                    row = {
                        "epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                        "lr": step_lr, "epoch_seconds": round(epoch_s, 2),
                        "images_per_second": round(float(totals[2]) / epoch_s, 1),
                    }
                    do_val = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
                    improved = False
                    metrics = None
                    if do_val:
                        t_val = time.perf_counter()
                        logits_val = predict_logits(eval_model, val.images, norm, device,
                                                    channels_last=cfg.channels_last)
                        bad = int((~torch.isfinite(logits_val).all(1)).sum())
                        if bad:  # argmax of NaN is no accuracy
                            kept = (f"this epoch was not saved; {last_path} holds epoch {epoch}"
                                    if epoch > start_epoch or state is not None else "nothing was saved")
                            raise TrainingError(
                                f"the model's outputs on the validation split are not finite numbers (NaN or inf) "
                                f"at epoch {epoch + 1}, on {bad} of {len(logits_val)} images, although its weights "
                                f"are: no accuracy can be measured; {kept}. Lower --lr (now {cfg.lr:g}) or check "
                                "the other options, and start a new run" + (" in another --out" if epoch > 0 else ""))
                        val_loss = float(F.cross_entropy(logits_val, val.labels))
                        metrics = classification_metrics(val.labels.numpy(), logits_val.argmax(1).numpy(), labels)
                        row.update(val_loss=val_loss, val_accuracy=metrics["accuracy"],
                                   val_macro_f1=metrics["macro_f1"], val_seconds=round(time.perf_counter() - t_val, 2))
                        improved = metrics["accuracy"] > best_acc
                        if improved:
                            best_acc, best_epoch, bad_epochs = metrics["accuracy"], epoch + 1, 0
                        else:
                            bad_epochs += 1
                    history.append(row)
                    self.log(
                        f"epoch {epoch + 1}/{cfg.epochs}  loss {train_loss:.4f}  acc {train_acc:.4f}"
                        + (f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}"
                           f"  val_f1 {row['val_macro_f1']:.4f}" if do_val else "")
                        + f"  {row['images_per_second']:.0f} img/s  {epoch_s:.1f}s" + ("  *" if improved else "")
                        + (f"  ({n_skipped} fp16 step{'s' if n_skipped > 1 else ''} with a non-finite loss skipped "
                           "by the gradient scaler)" if n_skipped else "")
                    )
                    if wandb_run is not None:
                        wandb_run.log(row, step=epoch + 1)
                    # the epoch's files are written together: an interrupt waits for the last of them, so a
                    # run never holds best.pt and metrics.json without the last.pt that --resume needs. last.pt
                    # comes first: a process killed before best.pt (SIGKILL, power) leaves a last.pt that holds
                    # the best epoch, from which --resume writes best.pt again
                    try:
                        with interrupts_deferred():
                            if self.dist.main:
                                base = {
                                    "model": cfg.model, "model_kwargs": model_kwargs, "labels": labels,
                                    "normalization": norm.to_dict(), "train_config": cfg.to_dict(), "data": fingerprint,
                                    "input_files": input_files, "epoch": epoch + 1,
                                }
                                stop = cfg.patience > 0 and bad_epochs >= cfg.patience
                                resume_state = {
                                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(),
                                    "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                                    "qat": qsim.state_dict() if qsim is not None else None,
                                    "history": history, "best_accuracy": best_acc, "best_epoch": best_epoch,
                                    "bad_epochs": bad_epochs, "epoch": epoch + 1, "normalization": norm.to_dict(),
                                }
                                save_checkpoint(last_path, {
                                    **base, "state_dict": eval_model.state_dict(), "resume": resume_state,
                                    "metrics": {"val_accuracy": row.get("val_accuracy"), "epoch": epoch + 1},
                                })
                                if improved:
                                    save_checkpoint(self.out / "best.pt", {
                                        **base, "state_dict": eval_model.state_dict(),
                                        "metrics": {"val_accuracy": metrics["accuracy"],
                                                    "val_macro_f1": metrics["macro_f1"], "val_split": val.split,
                                                    "epoch": epoch + 1, "params": n_params},
                                    })
                                    self._write_eval_outputs(metrics, val.split, epoch + 1)
                                self._write_history(history)
                                self._write_metrics(history, best_acc, best_epoch, n_params, device,
                                                    stop or epoch + 1 == cfg.epochs)
                    except (CheckpointError, OSError):  # a full disk: the run stops, and says where it can go on
                        if self.resume_hint is not None:  # None: the caller says it
                            from rich.markup import escape

                            self.log(f"[yellow]{escape(self._save_failed(last_path))}[/]")
                        raise
                    if cfg.patience > 0 and bad_epochs >= cfg.patience:
                        self.log(f"early stop: no val improvement in {cfg.patience} epochs (best {best_acc:.4f} "
                                 f"at epoch {best_epoch})")
                        stopped_early = True
                        break
        except BaseException as e:
            try:
                with interrupts_deferred():  # a second Ctrl-C (impatience) waits for the message and the plot
                    if isinstance(e, KeyboardInterrupt) and self.resume_hint is not None:  # None: the caller says it
                        if last_path.is_file():
                            self.log(f"[yellow]interrupted: the last finished epoch is in {last_path}: "
                                     f"{self.resume_hint}[/]")
                        else:
                            self.log("[yellow]interrupted: no epoch finished, so there is nothing to resume[/]")
                        mark_reported(e)
                    if self.dist.main and history:  # the finished epochs' curves, as a finished run has them
                        try:
                            self._plot_curves(history)
                        except Exception:  # noqa: BLE001 - a plot never hides why the run stopped
                            pass
            except KeyboardInterrupt:  # the held second signal: the run is stopping already
                pass
            raise
        finally:
            if wandb_run is not None:
                wandb_run.finish()
            self.dist.close()
            self._leave_out()
        if self.dist.main:
            self._plot_curves(history)
        return TrainResult(self.out, best_acc, best_epoch, len(history), history, stopped_early,
                           self.teacher_targets_seconds)

    # --- outputs ----------------------------------------------------------------
    def _label(self, teachers: list, image_sets, cfg: TrainConfig, amp_dtype: torch.dtype | None,
               title: str) -> list[torch.Tensor]:
        """The teachers' probabilities (:func:`precompute_teacher_probs`) for every image of each set of N x H x W
        uint8 images, with one progress bar. PyTorch teachers label under the training step's autocast
        (``amp_dtype``), as they would online; under torchrun each process labels its share and they pool."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        rank, world = self.dist.rank, self.dist.world
        out = []
        with Progress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=self.console, disable=not (self.progress and self.dist.main), transient=True) as prog:
            task = prog.add_task("targets", total=sum(len(range(rank, len(x), world)) for x in image_sets))
            device = image_sets[0].device.type
            with torch.autocast(device, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                for images in image_sets:
                    probs = precompute_teacher_probs(teachers, images, cfg.distill_temperature, cfg.distill_tta,
                                                     on_batch=lambda n: prog.advance(task, n), rank=rank,
                                                     world=world)
                    out.append(self.dist.sum(probs))
        return out

    def _offline_targets(self, teachers: list, x_train: torch.Tensor, cfg: TrainConfig,
                         amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``--distill-targets offline``: the teachers' probabilities for every training image, computed once."""
        t0 = time.perf_counter()
        (probs,) = self._label(teachers, [x_train], cfg, amp_dtype, "teacher targets")
        views = "each image and its mirror image" if cfg.distill_tta else "each image"
        world = self.dist.world
        shared = f", shared by {world} processes" if world > 1 else ""
        self.teacher_targets_seconds = round(time.perf_counter() - t0, 2)
        self.log(f"offline distillation targets: the teacher(s) saw {views} once, un-augmented "
                 f"({len(x_train):,} images{shared}, {self.teacher_targets_seconds:.0f} s)")
        return probs

    def _replay_targets(self, teachers: list, x_train: torch.Tensor, cfg: TrainConfig, aug,
                        amp_dtype: torch.dtype | None = None):
        """``--distill-targets replay``: K augmented views of every training image and the teachers' answers.

        Loaded from ``--distill-cache`` when it holds targets made with the same settings; otherwise made here
        (each process of a torchrun labels its share of every view) and, with ``--distill-cache``, written there.
        """
        from fer_edge.training.replay import (DEFAULT_REPLAY_VIEWS, ReplayTargets, cache_key, load_cache,
                                              make_views, save_cache)

        k = cfg.distill_views or DEFAULT_REPLAY_VIEWS
        precision = str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else "float32"
        if any(t.runtime != "torch" for t in teachers):
            precision = "float32"  # ONNX Runtime teachers run FP32 whatever the autocast
        key = None
        if cfg.distill_cache:
            key = cache_key(teachers=cfg.distill, images_u8=x_train, augment=cfg.augment, aug=aug, views=k,
                            seed=cfg.seed, temperature=cfg.distill_temperature, tta=cfg.distill_tta,
                            precision=precision)
            cached = load_cache(cfg.distill_cache, key, x_train.device)
            if cached is not None:
                self.log(f"replay distillation targets: {cached.num_views} views of {len(x_train):,} images "
                         f"loaded from {cfg.distill_cache} ({cached.nbytes() / 2**20:.0f} MiB)")
                return cached
        t0 = time.perf_counter()
        views = make_views(x_train, aug, k, seed=cfg.seed * 100_003 + 99_991)
        probs = self._label(teachers, list(views), cfg, amp_dtype, "teacher targets (replay)")
        world = self.dist.world
        targets = ReplayTargets(views, torch.stack(probs))
        self.teacher_targets_seconds = round(time.perf_counter() - t0, 2)
        flips = " and its mirror image" if cfg.distill_tta else ""
        shared = f", shared by {world} processes" if world > 1 else ""
        self.log(f"replay distillation targets: the teacher(s) saw {k} --augment {cfg.augment} views{flips} of each "
                 f"of {len(x_train):,} images{shared} ({self.teacher_targets_seconds:.0f} s, "
                 f"{targets.nbytes() / 2**20:.0f} MiB)")
        if cfg.distill_cache and self.dist.main:
            save_cache(cfg.distill_cache, key, targets)
            self.log(f"replay targets kept in {cfg.distill_cache}")
        return targets

    def _write_history(self, history: list[dict]) -> None:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow(row)
        write_text_atomic(self.out / "history.csv", buf.getvalue())

    def _write_metrics(self, history, best_acc, best_epoch, n_params, device, final: bool) -> None:
        p = self.out / "metrics.json"
        prev = _read_metrics(p)
        prev.update({
            "model": self.cfg.model, "params": n_params, "best_val_accuracy": best_acc, "best_epoch": best_epoch,
            "epochs_run": len(history), "finished": final, "device": str(device),
            "train_seconds": round(sum(r["epoch_seconds"] for r in history), 1),
            "last": history[-1] if history else None,
            **({"teacher_targets_seconds": self.teacher_targets_seconds}
               if self.teacher_targets_seconds is not None else {}),
        })
        write_json_atomic(p, prev)

    def _write_eval_outputs(self, metrics: dict, split: str, epoch: int) -> None:
        from fer_edge.training import plots

        p = self.out / "metrics.json"
        prev = _read_metrics(p)
        prev["best_val"] = {"split": split, "epoch": epoch, **{
            k: metrics[k] for k in ("accuracy", "macro_f1", "n", "per_class", "confusion")}}
        write_json_atomic(p, prev)
        rows = ["class,precision,recall,f1,support"] + [
            f"{k},{v['precision']:.4f},{v['recall']:.4f},{v['f1']:.4f},{v['support']}"
            for k, v in metrics["per_class"].items()
        ]
        write_text_atomic(self.out / "per_class.csv", "\n".join(rows) + "\n")
        path = self.out / "confusion_matrix.png"
        title = f"{self.cfg.model} on {split}: accuracy {metrics['accuracy']:.4f}"
        self._plot(lambda: plots.plot_confusion(np.asarray(metrics["confusion"]), list(LABELS), path, title=title),
                   path)

    def _mend_best_report(self, state: dict, val) -> None:
        """On resume: the best epoch's report (``metrics.json``'s ``best_val``, ``per_class.csv``, the confusion
        matrix) is written after its ``best.pt``, so a process killed between them (or before ``best.pt``, which
        :meth:`_restore_best` writes again) left the report of an earlier epoch beside the best weights. Such a
        report (another epoch, another accuracy, or ``per_class.csv`` missing; not the PNG, which a broken
        matplotlib never draws) is made again from ``best.pt``, with a line."""
        best_epoch, best_acc = int(state["best_epoch"]), float(state["best_accuracy"])
        if not self.dist.main or best_epoch <= 0:
            return
        report = _read_metrics(self.out / "metrics.json").get("best_val") or {}
        recorded = report.get("accuracy")
        current = (report.get("epoch", best_epoch) == best_epoch and isinstance(recorded, (int, float))
                   and math.isclose(recorded, best_acc, abs_tol=1e-9))
        if current and (self.out / "per_class.csv").is_file():
            return
        why = ("per_class.csv was missing" if current else
               f"the report was of epoch {report['epoch']}" if "epoch" in report else "the report was not of it")
        best = load_checkpoint(self.out / "best.pt")
        logits = predict_logits(best.build_model().to(self.device), val.images, best.normalization, self.device,
                                channels_last=self.cfg.channels_last)
        metrics = classification_metrics(val.labels.numpy(), logits.argmax(1).cpu().numpy(), list(LABELS))
        with interrupts_deferred():
            self._write_eval_outputs(metrics, val.split, best_epoch)
        self.log(f"the best epoch's report (per_class.csv, confusion matrix): {why}; made again from "
                 f"{self.out / 'best.pt'} (epoch {best_epoch}, val accuracy {metrics['accuracy']:.4f})")

    def _plot_curves(self, history: list[dict]) -> None:
        from fer_edge.training import plots

        if history:
            path = self.out / "curves.png"
            self._plot(lambda: plots.plot_curves(history, path, title=self.cfg.model), path)

    def _plot(self, draw, path: Path) -> None:
        """``draw()`` writing the plot ``path``; one that cannot be drawn (matplotlib missing or broken, a full disk)
        is a warning, once a run for each plot, and the run goes on: the metrics and checkpoints are already
        written, and a plot is never why training stops."""
        from rich.markup import escape

        from fer_edge.plotting import draw_or_warn

        def warn(text: str) -> None:
            if path.name not in self._plots_warned:
                self._plots_warned.add(path.name)
                self.log(f"[yellow]warning: {escape(text)}[/]")

        draw_or_warn(draw, path, warn)

    def _lock_out(self, last=None) -> None:
        """Hold ``OUT/.fer-edge-train.lock`` (an advisory ``flock``, released by the system when the process ends,
        however it ends) while this process writes the run, so that two ``fer-edge train`` with one ``--out``
        (two started at once, or two ``--resume`` of one run) do not write over each other: the second is refused.
        Taken once the folder exists, then the folder is checked again: a new run refuses a run another process
        wrote meanwhile; a resume (``last``: the last.pt it loaded) refuses a last.pt changed since it was read.
        (Where the system has no ``fcntl``, Windows, there is no lock: :func:`fer_edge.utils.hold_lock`.)"""
        from fer_edge.utils import hold_lock

        if not self.dist.main:
            return
        try:
            self._lock = hold_lock(self.out / LOCK_FILE)
        except BlockingIOError:
            raise TrainingError(f"{self.out}: another fer-edge train is writing this run now (it holds "
                                f"{self.out / LOCK_FILE}); wait for it to end, or choose another --out") from None
        if last is None:
            held = [n for n in RUN_FILES if (self.out / n).exists()]
            if held:
                self._leave_out()
                raise TrainingError(f"{self.out} already holds a run ({', '.join(held)}), written by another "
                                    "fer-edge train while this one started; choose another --out (fer-edge train "
                                    "never overwrites a run)")
        else:
            try:
                same = load_checkpoint(last.path).raw.get("resume", {}).get("epoch") == last.raw["resume"]["epoch"]
            except CheckpointError:
                same = False
            if not same:
                self._leave_out()
                raise TrainingError(f"--resume: {last.path} changed while this run started (another fer-edge "
                                    "train wrote it); run the --resume again to continue from it")

    def _save_failed(self, last_path: Path) -> str:
        """The line a run whose epoch's files could not be written (a full disk) prints before its error: which epoch
        ``--resume`` continues from (each file is written atomically, so last.pt holds the last epoch saved whole)."""
        if not last_path.is_file():
            return "the epoch's files could not be written: no epoch was saved, so there is nothing to resume"
        try:
            epoch = f" (epoch {int(load_checkpoint(last_path).raw['resume']['epoch'])})"
        except (CheckpointError, KeyError, TypeError, ValueError):
            epoch = ""
        return (f"the epoch's files could not be written: the last finished epoch is in {last_path}{epoch}: "
                f"{self.resume_hint}")

    def _leave_out(self) -> None:
        """Release the run's lock (removing its file) and remove ``--out`` again when this process made it and it
        is empty (the run stopped before its first epoch was saved)."""
        from fer_edge.utils import release_lock

        release_lock(self.out / LOCK_FILE, self._lock)
        self._lock = None
        if self._created_out and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def _wandb_init(self, n_params: int):
        if not self.cfg.wandb:
            return None
        try:
            import wandb
        except ImportError:
            self._leave_out()
            raise TrainingError(_WANDB_MISSING) from None
        try:
            return wandb.init(project=self.cfg.wandb, config={**self.cfg.to_dict(), "params": n_params},
                              dir=str(self.out), name=self.out.name, resume="allow")
        except Exception as e:  # wandb's own errors (not logged in, no network) have no common base class
            self._leave_out()
            if self._created_out:
                import shutil

                shutil.rmtree(self.out, ignore_errors=True)  # only wandb's files: nothing of the run yet
            raise TrainingError(f"--wandb {self.cfg.wandb}: Weights & Biases did not start ({type(e).__name__}: "
                                f"{e}); run `wandb login`, or set WANDB_MODE=offline to log locally") from None


def _resume_advice(out: Path) -> str:
    """What to do with an unfinished run in ``out``: --resume, or (its last.pt unreadable, so --resume would
    fail) what can still be done with it."""
    last, best = out / "last.pt", out / "best.pt"
    try:
        why = None if load_checkpoint(last).raw.get("resume") else f"{last} has no resume state"
    except CheckpointError as e:
        why = str(e)
    if why is None:
        return "pass --resume to continue it or "
    return f"--resume cannot continue it: {why}; {_init_advice(out)}"


def _init_advice(out: Path) -> str:
    """"to train on from its best.pt, pass --init OUT/best.pt with another --out, or " when ``out``'s best.pt can
    be read, else ""."""
    best = out / "best.pt"
    try:
        load_checkpoint(best)
    except CheckpointError:
        return ""
    return f"to train on from its best.pt, pass --init {best} with another --out, or "


def _non_finite_tensors(model: torch.nn.Module, ema: torch.nn.Module | None = None) -> list[str]:
    """Names of the floating-point parameters and buffers of ``model``, then of its weight-EMA copy ``ema`` (named
    ``EMA copy's <name>``), that hold inf or NaN."""
    copy = non_finite_tensors(ema.state_dict()) if ema is not None and ema is not model else []
    return non_finite_tensors(model.state_dict()) + [f"EMA copy's {n}" for n in copy]


def _count_tensors(broken: list[str]) -> str:
    """``44 tensors of the model and 44 of its EMA copy`` for :func:`_non_finite_tensors`'s names."""
    ema = sum(n.startswith("EMA copy's ") for n in broken)
    own = len(broken) - ema
    return (f"{own} tensor(s) of the model" if own else "no tensor of the model") + (
        f" and {ema} of its EMA copy" if ema else "")


def _remove_debris(out: Path) -> None:
    """Remove the temporary files a killed run left beside its files (``.tmp-last-x1y2.pt``, see
    :func:`fer_edge.utils.atomic_path`): half-written copies nothing reads, which no later write would remove."""
    for name in RUN_FILES + ("per_class.csv", "curves.png", "confusion_matrix.png"):
        stem, suffix = name.rsplit(".", 1)
        for f in out.glob(f".tmp-{stem}-*.{suffix}"):
            with contextlib.suppress(OSError):
                f.unlink()


def _best_problem(best: Path, epoch: int, train_config: dict) -> str | None:
    """Why ``best`` does not hold the run's best epoch ``epoch``: it cannot be read as a checkpoint (missing,
    truncated, not one), or it is this run's (the same ``train_config``) from an earlier epoch (the process was
    killed, or the disk filled, between last.pt and best.pt); else None. (Another readable file is left alone,
    whatever it holds: it may be the user's.)"""
    from rich.markup import escape

    try:
        ck = load_checkpoint(best)
    except CheckpointError as e:
        return escape(str(e))
    held = ck.raw.get("epoch")

    def fixed(c: dict) -> dict:  # what a --resume may not change
        return {k: v for k, v in c.items() if k not in RESUME_FREE}

    if isinstance(held, int) and held < epoch and fixed(ck.train_config) == fixed(train_config):
        return f"{best} holds epoch {held}, not the best epoch {epoch} (the run stopped before it was written)"
    return None


def _read_metrics(p: Path) -> dict:
    """A run's ``metrics.json`` to update, or {} when there is none or it is damaged (cut short, not an object):
    it is written again whole, never a reason to stop the run."""
    try:
        prev = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return prev if isinstance(prev, dict) else {}


def run_finished(out: Path) -> bool:
    """Whether the run in ``out`` says it is finished (its ``metrics.json``'s ``finished``)."""
    try:
        return bool(json.loads((out / "metrics.json").read_text()).get("finished"))
    except (OSError, ValueError, AttributeError):
        return False


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, quiet: bool = False,
          resume_hint: str = "continue with --resume") -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` and write the run directory ``cfg.out`` (``quiet``: no log lines).

    Ctrl-C or SIGTERM stops it with ``KeyboardInterrupt`` after saying which checkpoint ``--resume`` continues from
    (``resume_hint``: how the caller's user goes on, e.g. "rerun the leaderboard").
    """
    with sigterm_as_interrupt():
        return Trainer(cfg, progress=progress, quiet=quiet, resume_hint=resume_hint).run(resume=resume)
