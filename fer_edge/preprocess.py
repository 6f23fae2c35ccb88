"""The one preprocessing path shared by training, eval, export validation, bench and predict.

Images become uint8 48x48 grayscale arrays; a batch of those becomes float32
N x 1 x 48 x 48 with ``(x / 255 - mean) / std``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_edge.constants import IMAGE_SIZE
from fer_edge.errors import DataError


@dataclass(frozen=True)
class Normalization:
    """Applied to pixels scaled to 0..1: ``(x - mean) / std``."""

    mean: float
    std: float

    def to_dict(self) -> dict:
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        return cls(float(d["mean"]), float(d["std"]))


def load_image(image):
    """A path, PIL image or numpy array -> a loaded PIL image with EXIF orientation applied.

    Files get ``ImageOps.exif_transpose``. Arrays are taken as grayscale (H x W) or RGB(A)
    (H x W x 3/4), uint8 or floats in 0..1 / 0..255. Raises :class:`DataError` for a file
    that is missing or not an image.
    """
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if path.is_dir():
            raise DataError(f"{path}: is a directory, not an image")
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                im.load()
                return im.copy()
        except Exception as e:  # PIL raises many types for bad files
            raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
            raise DataError(f"cannot use an array of shape {tuple(image.shape)} as an image")
        if arr.dtype != np.uint8:
            arr = np.asarray(arr, dtype=np.float64)
            if float(np.nanmax(arr)) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(arr))
    if hasattr(image, "convert") and hasattr(image, "size"):
        return image
    raise DataError(f"cannot use an object of type {type(image).__name__} as an image")



def to_gray48(image) -> np.ndarray:
    """A PIL image, numpy array (HxW, HxWx3/4) or path -> uint8 48x48 grayscale.

    Loading goes through :func:`load_image` (EXIF orientation honoured); colour is converted
    with PIL's ITU-R 601-2 luma transform; other sizes are resized with bilinear filtering.
    """
    from PIL import Image

    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    image = load_image(image)
    if image.mode != "L":
        image = image.convert("L")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def normalize(gray: np.ndarray, norm: Normalization) -> np.ndarray:
    """uint8 N x 48 x 48 (or 48 x 48) -> float32 N x 1 x 48 x 48, normalised."""
    gray = np.asarray(gray)
    if gray.ndim == 2:
        gray = gray[None]
    if gray.ndim != 3 or gray.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"expected N x {IMAGE_SIZE} x {IMAGE_SIZE} images, got shape {tuple(gray.shape)}")
    x = gray.astype(np.float32)[:, None] / 255.0
    return ((x - norm.mean) / norm.std).astype(np.float32)


def normalize_torch(gray, norm: Normalization):
    """The same as :func:`normalize` for a uint8 torch tensor (N x 48 x 48 or N x 1 x 48 x 48)."""
    x = gray.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return (x / 255.0 - norm.mean) / norm.std
