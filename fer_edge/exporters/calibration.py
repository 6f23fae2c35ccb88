"""Calibration and validation image sets: a seeded, class-stratified sample of one split.

Both go through :func:`fer_edge.preprocess.normalize` (the one preprocessing path), with
the checkpoint's normalisation, and carry a record of exactly which images they are
(file, split, count, sampling, index hash) for the manifest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_edge.errors import FerEdgeError
from fer_edge.preprocess import Normalization, normalize

DEFAULT_CALIB_SIZE = 500
#: None: the whole validation split. Measured on the shipped small model's ONNX INT8: agreement
#: 98.44% on a 1,024-image sample against 98.86% on all 3,589 PublicTest images; a sample that
#: small decides a 98.5% gate by noise, and running all of it takes about a second.
DEFAULT_VAL_SIZE = None
DEFAULT_SEED = 0
#: Below this many calibration images a warning is given.
MIN_RECOMMENDED_CALIB = 200
#: Validation uses at least this many images when the split has them.
MIN_VAL_SIZE = 512


@dataclass
class ImageSet:
    """Preprocessed images of one split, with where they came from."""

    images: np.ndarray  # uint8 N x 48 x 48
    labels: np.ndarray  # int64 N
    inputs: np.ndarray  # float32 N x 1 x 48 x 48, normalised
    record: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, size: int = 64):
        for i in range(0, len(self), size):
            yield self.inputs[i : i + size]


def sample_split(data: str | Path, split: str | None, size: int | None, seed: int,
                 norm: Normalization, default: str, progress: bool = True) -> ImageSet:
    """``size`` images (None or >= the split: all of them) of ``split`` (None: the default split).

    ``default``: ``"train"`` or ``"val"``, the split used when ``split`` is None.
    """
    from fer_edge.data import default_train_split, default_val_split, index_hash, load_split, stratified_indices

    if split is None:
        # the parity gate selects nothing: a folder's test split (train/ + test/, no val/) is fine for it
        split = default_train_split(data) if default == "train" else default_val_split(data, test_ok=True)
    fs = load_split(data, split, progress=progress)
    labels_all = fs.labels.numpy()
    n_all = len(labels_all)
    if size is not None and size <= 0:
        raise FerEdgeError(f"the number of images must be positive, got {size}")
    if size is None or size >= n_all:
        idx = np.arange(n_all, dtype=np.int64)
        sampling = "all images of the split"
    else:
        idx = stratified_indices(labels_all, int(size), seed)
        sampling = f"stratified by class, seed {seed}"
    images = fs.images.numpy()[idx]
    labels = labels_all[idx].astype(np.int64)
    record = {
        "file": str(Path(fs.source).resolve()),
        "split": fs.split,
        "count": int(len(idx)),
        "split_size": int(n_all),
        "sampling": sampling,
        "seed": int(seed),
        "index_hash": index_hash(idx),
        "data_sha256": fs.fingerprint.get("sha256"),
        "class_counts": np.bincount(labels, minlength=7).astype(int).tolist(),
    }
    return ImageSet(images=images, labels=labels, inputs=normalize(images, norm), record=record)


def load_calibration(data: str | Path, split: str | None = None, size: int = DEFAULT_CALIB_SIZE,
                     seed: int = DEFAULT_SEED, norm: Normalization | None = None,
                     progress: bool = True) -> tuple[ImageSet, list[str]]:
    """The calibration set (default: the source's training split) and any warnings about it."""
    if norm is None:
        raise FerEdgeError("calibration needs the checkpoint's normalization")
    cal = sample_split(data, split, size, seed, norm, "train", progress)
    return cal, calibration_warnings(cal, size)


def _fewer_images(kind: str, s: ImageSet, requested: int | None, minimum: int, below_minimum: str) -> list[str]:
    """One line when ``s`` has fewer images than ``requested`` or ``minimum`` (then ``below_minimum`` is added),
    e.g. ``"calibration used 300 images, all that Training of X has (500 asked for)"``; [] otherwise."""
    n, rec = len(s), s.record
    if (requested is None or n >= requested) and n >= minimum:
        return []
    where = f"{rec['split']} of {rec['file']}"
    if requested is not None and n < requested:
        msg = f"{kind} used {n} images, all that {where} has ({requested} asked for)"
    elif rec.get("count") == rec.get("split_size"):
        msg = f"{kind} used {n} images, all of {where}"
    else:
        msg = f"{kind} used {n} images of {where}"
    return [msg + (f"; {below_minimum}" if n < minimum else "")]


def calibration_warnings(cal: ImageSet, requested: int | None) -> list[str]:
    """One line when calibration got fewer images than asked for, or fewer than :data:`MIN_RECOMMENDED_CALIB`."""
    return _fewer_images("calibration", cal, requested, MIN_RECOMMENDED_CALIB,
                         f"INT8 ranges from fewer than {MIN_RECOMMENDED_CALIB} calibration images can be unreliable")


def validation_warnings(vset: ImageSet, requested: int | None) -> list[str]:
    """One line when the parity gate got fewer images than asked for, or fewer than :data:`MIN_VAL_SIZE`."""
    return _fewer_images("the parity gate", vset, requested, MIN_VAL_SIZE,
                         f"below the {MIN_VAL_SIZE} images the gate is meant to use, so its agreement and accuracy "
                         "figures are noisier")


def load_validation(data: str | Path, split: str | None = None, size: int | None = DEFAULT_VAL_SIZE,
                    seed: int = DEFAULT_SEED, norm: Normalization | None = None,
                    progress: bool = True) -> ImageSet:
    """The held-out validation set (default: the source's validation split), at least 512 images when available."""
    if norm is None:
        raise FerEdgeError("validation needs the checkpoint's normalization")
    if size is not None and size < MIN_VAL_SIZE:
        raise FerEdgeError(f"validation needs at least {MIN_VAL_SIZE} images (got --val-size {size})")
    return sample_split(data, split, size, seed, norm, "val", progress)
