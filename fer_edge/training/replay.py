"""Replayed distillation targets (``fer-edge train --distill-targets replay``).

After FKD (Shen and Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022): before
the first epoch every training image is augmented ``--distill-views K`` times with the run's ``--augment``
preset, and the teachers label each of those views once. Each step then draws, for every image of the batch,
one of its K stored views and trains the student on exactly that view, against the teachers' answer for it.
The step costs what it costs without a teacher (as ``offline``), yet, unlike ``offline``, the teacher's
answer belongs to the augmented image the student sees (Beyer et al.'s "consistent teaching", CVPR 2022),
from a repertoire of K augmentations per image instead of a fresh one per step.

Labelling costs K times ``offline``'s, so the views and their targets can be kept in a file
(``--distill-cache PATH``) that a later run with the same teachers, training images, augmentation, views,
seed, temperature, flip TTA and labelling precision loads instead of labelling again (for example a second
student). A cache made for other settings is refused, naming what differs; it is never silently relabelled
or reused.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fer_edge.constants import NUM_CLASSES
from fer_edge.errors import TrainingError
from fer_edge.training.augment import AugmentConfig, augment_batch

#: ``--distill-views`` when ``--distill-targets replay`` is given without it.
DEFAULT_REPLAY_VIEWS = 8
CACHE_FORMAT = "fer-edge replay distillation targets"
CACHE_VERSION = 1


@dataclass
class ReplayTargets:
    """``views``: K x N x H x W uint8 augmented images; ``probs``: K x N x C teacher probabilities."""

    views: torch.Tensor
    probs: torch.Tensor

    @property
    def num_views(self) -> int:
        return int(self.views.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One random stored view per image of ``idx``: (B x 1 x H x W float 0..1 images, B x C targets).

        Draws from torch's global RNG (reseeded every epoch by the trainer, so ``--resume`` repeats it; under
        torchrun each process from its own stream).
        """
        v = torch.randint(self.num_views, (len(idx),), device=idx.device)
        x = self.views[v, idx].unsqueeze(1).float().div_(255.0)
        return x, self.probs[v, idx]

    def nbytes(self) -> int:
        return self.views.numel() * self.views.element_size() + self.probs.numel() * self.probs.element_size()


def replay_nbytes(views: int, images_u8: torch.Tensor, num_classes: int = NUM_CLASSES) -> tuple[int, int]:
    """Bytes of ``views`` stored views of ``images_u8`` (uint8) and of their float32 targets."""
    per_view = images_u8.numel() * images_u8.element_size()
    return int(views) * per_view, int(views) * len(images_u8) * int(num_classes) * 4


def available_memory(device: torch.device) -> int | None:
    """Bytes free now where tensors on ``device`` live (host RAM for the CPU, the GPU's free memory for CUDA);
    None when it cannot be told."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            import psutil

            return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no figure: the allocation itself decides
        return None
    return None


def _gib(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size / 10:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 2**10:,.1f} KiB"


def _memory_message(views: int, images_u8: torch.Tensor, num_classes: int, available: int | None) -> str:
    v, t = replay_nbytes(views, images_u8, num_classes)
    per_view = sum(replay_nbytes(1, images_u8, num_classes))
    where = "GPU memory" if images_u8.device.type == "cuda" else "memory"
    if available is None:
        have = f"more than this machine's {where} could allocate"
        fit = ""
    else:
        have = f"but only {_gib(available)} of {where} is available"
        fit = f" (about {available // per_view:,} fit now)" if per_view else ""
    return (f"--distill-views {views}: {views:,} views of {len(images_u8):,} images take {_gib(v + t)} "
            f"({_gib(v)} of views, {_gib(t)} of targets), {have}: lower --distill-views{fit}")


def check_replay_memory(views: int, images_u8: torch.Tensor, num_classes: int = NUM_CLASSES) -> None:
    """Raise :class:`TrainingError` if ``views`` views of ``images_u8`` and their targets would not fit in the
    memory available now on the images' device."""
    available = available_memory(images_u8.device)
    if available is not None and sum(replay_nbytes(views, images_u8, num_classes)) > available:
        raise TrainingError(_memory_message(views, images_u8, num_classes, available))


def make_views(images_u8: torch.Tensor, aug: AugmentConfig, views: int, seed: int,
               batch_size: int = 1024, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """K augmented copies of N x H x W uint8 images (K x N x H x W uint8), the same for the same seed.

    The augmentations are drawn from a forked RNG seeded with ``seed``, so the caller's random stream is left
    as it was. Each view is rounded to uint8, so what the teachers label is exactly what the student will see.
    Views (and their ``num_classes`` float32 targets) that would not fit in the memory available now are
    refused before anything is allocated (:func:`check_replay_memory`).
    """
    if views < 1:
        raise TrainingError(f"--distill-views must be at least 1, got {views}")
    check_replay_memory(views, images_u8, num_classes)
    try:
        out = torch.empty((views, *images_u8.shape), dtype=torch.uint8, device=images_u8.device)
    except (RuntimeError, MemoryError):  # the check above could not tell (no figure for this device)
        raise TrainingError(_memory_message(views, images_u8, num_classes, None)) from None
    devices = [images_u8.device.index or 0] if images_u8.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for k in range(views):
            for i in range(0, len(images_u8), batch_size):
                x = images_u8[i : i + batch_size].unsqueeze(1).float().div_(255.0)
                out[k, i : i + len(x)] = augment_batch(x, aug).squeeze(1).mul_(255.0).round_().to(torch.uint8)
    return out


def sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def cache_key(*, teachers: list[str], images_u8: torch.Tensor, augment: str, aug: AugmentConfig, views: int,
              seed: int, temperature: float, tta: bool, precision: str) -> dict:
    """What a cache's targets depend on; two runs may share a cache exactly when their keys are equal."""
    from fer_edge.utils import sha256_path

    return {
        "teachers": [sha256_path(t) for t in teachers],
        "train_images": sha256_tensor(images_u8),
        "augment": augment,
        "augment_params": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(aug).items()},
        "views": int(views),
        "seed": int(seed),
        "temperature": float(temperature),
        "tta": bool(tta),
        "precision": precision,
    }


def _describe_difference(saved: dict, wanted: dict) -> list[str]:
    diffs = []
    for k in wanted:
        if saved.get(k) != wanted[k]:
            if k in ("teachers", "train_images", "augment_params"):
                diffs.append(f"{k} differ")
            else:
                diffs.append(f"{k} {saved.get(k)!r} (this run: {wanted[k]!r})")
    return diffs


def load_cache(path: str | Path, key: dict, device: torch.device) -> ReplayTargets | None:
    """The cached targets at ``path`` if they were made with ``key``; None if there is no file.

    Raises :class:`TrainingError` if the file is not a replay cache or was made for other settings.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise TrainingError(f"--distill-cache {path}: not a readable replay cache ({type(e).__name__}: {e}); "
                           "delete it or choose another path") from None
    if not isinstance(raw, dict) or raw.get("format") != CACHE_FORMAT:
        raise TrainingError(f"--distill-cache {path}: not a fer-edge replay cache; choose another path")
    if raw.get("version") != CACHE_VERSION:
        raise TrainingError(f"--distill-cache {path}: cache version {raw.get('version')!r}, this fer-edge reads "
                            f"{CACHE_VERSION}; delete it or choose another path")
    diffs = _describe_difference(raw.get("key", {}), key)
    if diffs:
        raise TrainingError(f"--distill-cache {path} was made for other settings: {'; '.join(diffs)}. "
                            "Delete it or choose another path to label again")
    views, probs = raw["views"], raw["probs"]
    if views.dtype != torch.uint8 or views.shape[:2] != probs.shape[:2] or views.shape[0] != key["views"]:
        raise TrainingError(f"--distill-cache {path}: views {tuple(views.shape)} and targets {tuple(probs.shape)} "
                            "do not fit together; delete it and label again")
    return ReplayTargets(views.to(device), probs.to(device))


def save_cache(path: str | Path, key: dict, targets: ReplayTargets) -> None:
    """Write the targets atomically (temporary file, then rename)."""
    from fer_edge.utils import atomic_path

    payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key,
               "views": targets.views.cpu(), "probs": targets.probs.float().cpu()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
