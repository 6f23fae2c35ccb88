"""Tiny synthetic FER-like data sets for tests and smoke runs (no real faces).

Each class has its own fixed random low-frequency pattern; samples are that pattern
plus noise, a random shift and brightness change, so a CNN can learn them well above
chance in a few epochs while they are not trivially separable by one pixel.
"""
from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np

from fer_edge.constants import IMAGE_SIZE, LABELS, NUM_CLASSES


def make_synthetic(n_per_class: int = 20, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x size x size images and int64 labels, N = 7 * n_per_class, classes interleaved."""
    rng = np.random.default_rng(seed)
    proto_rng = np.random.default_rng(1234)  # prototypes are the same for every seed
    coarse = proto_rng.uniform(0, 1, size=(NUM_CLASSES, 6, 6))
    protos = np.kron(coarse, np.ones((size // 6 + 1, size // 6 + 1)))[:, :size, :size]
    images, labels = [], []
    for i in range(n_per_class):
        for c in range(NUM_CLASSES):
            img = protos[c] * 160 + 48
            img = np.roll(img, rng.integers(-2, 3, size=2), axis=(0, 1))
            img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 18, size=img.shape)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def write_csv(path: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write a Kaggle-format CSV (``emotion,pixels,Usage``); gzip when the name ends in .gz."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        for usage, (imgs, labels) in splits.items():
            for img, lab in zip(imgs, labels):
                w.writerow([int(lab), " ".join(map(str, img.reshape(-1).tolist())), usage])
    return path


def write_folder(root: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], ext: str = "png") -> Path:
    """Write ``root/<split>/<class>/<i>.<ext>`` image folders (the popular Kaggle layout)."""
    from PIL import Image

    root = Path(root)
    for split, (imgs, labels) in splits.items():
        for i, (img, lab) in enumerate(zip(imgs, labels)):
            d = root / split / LABELS[int(lab)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{split}_{i}.{ext}")
    return root
