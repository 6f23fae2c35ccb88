"""Batched augmentation on the training device: one set of tensor ops for the whole batch.

Every sample gets its own random parameters, drawn from torch's global RNG (seeded per
epoch by the trainer, so a resumed run repeats them, and under torchrun per process too, so
each process draws its own for its share of the batch). Input and output are float
N x 1 x 48 x 48 in 0..1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.1  # fraction of the image size
    brightness: float = 0.2
    contrast: float = 0.2
    erase_p: float = 0.25
    erase_area: tuple[float, float] = (0.02, 0.15)


PRESETS: dict[str, AugmentConfig | None] = {
    "none": None,
    "light": AugmentConfig(rotate_deg=5.0, scale=(0.95, 1.05), translate=0.05, brightness=0.1, contrast=0.1,
                           erase_p=0.0),
    "standard": AugmentConfig(),
    "strong": AugmentConfig(rotate_deg=15.0, scale=(0.85, 1.15), translate=0.12, brightness=0.3, contrast=0.3,
                            erase_p=0.5),
}


def _uniform(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def augment_batch(x: torch.Tensor, cfg: AugmentConfig | None) -> torch.Tensor:
    """Flip, rotate/scale/translate (one affine grid_sample), brightness/contrast, random erasing."""
    if cfg is None:
        return x
    n, dev = x.shape[0], x.device
    # geometric: one affine matrix per sample, the flip folded in as a sign on x
    angle = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, dev) * (math.pi / 180)
    scale = _uniform(n, *cfg.scale, dev)
    flip = torch.where(torch.rand(n, device=dev) < cfg.flip, -1.0, 1.0)
    tx = _uniform(n, -cfg.translate, cfg.translate, dev) * 2
    ty = _uniform(n, -cfg.translate, cfg.translate, dev) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # photometric
    if cfg.brightness or cfg.contrast:
        b = _uniform(n, -cfg.brightness, cfg.brightness, dev).view(n, 1, 1, 1)
        c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, dev).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean + b).clamp_(0, 1)
    # random erasing: one rectangle per selected sample, filled with noise
    if cfg.erase_p > 0:
        h, w = x.shape[-2:]
        area = _uniform(n, *cfg.erase_area, dev) * h * w
        ratio = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), dev))
        eh = (area * ratio).sqrt().clamp(1, h)
        ew = (area / ratio).sqrt().clamp(1, w)
        y0 = torch.rand(n, device=dev) * (h - eh)
        x0 = torch.rand(n, device=dev) * (w - ew)
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        inside = (
            (rows >= y0.view(n, 1, 1)) & (rows < (y0 + eh).view(n, 1, 1))
            & (cols >= x0.view(n, 1, 1)) & (cols < (x0 + ew).view(n, 1, 1))
        )
        mask = (inside & (torch.rand(n, 1, 1, device=dev) < cfg.erase_p)).unsqueeze(1)
        x = torch.where(mask, torch.rand_like(x), x)
    return x


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float, prob: float = 1.0):
    """MixUp / CutMix (one of them per batch, chosen at random when both are on), on a batch with
    probability ``prob`` (timm's ``mixup_prob``; at 1.0 no extra random number is drawn, so runs made before
    this option keep their random stream).

    Returns (x, y_a, y_b, lam, perm): the loss is ``lam * L(y_a) + (1 - lam) * L(y_b)``; ``perm`` is the
    partner of each row (``y_b = y_a[perm]``; the identity when nothing was mixed), so per-row targets
    such as a teacher's precomputed probabilities mix the same way.
    """
    if (mixup <= 0 and cutmix <= 0) or prob <= 0 or (prob < 1 and float(torch.rand(())) >= prob):
        return x, y, y, 1.0, torch.arange(x.shape[0], device=x.device)
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()) < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, y, y[perm], lam, perm
