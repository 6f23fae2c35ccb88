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

    @staticmethod
    def problem(d) -> str | None:
        """What keeps ``d`` (``{"mean": .., "std": ..}``) from being a usable normalisation, or None: a finite mean
        and a positive, finite std (a zero std turns every image into the same input)."""
        import math

        if not isinstance(d, dict) or "mean" not in d or "std" not in d:
            return f"must be {{'mean': .., 'std': ..}}, got {d!r}"
        try:
            mean, std = float(d["mean"]), float(d["std"])
        except (TypeError, ValueError):
            return f"mean and std must be numbers, got mean={d['mean']!r} std={d['std']!r}"
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            return f"needs a finite mean and a positive std, got mean={mean} std={std}"
        return None


def labels_problem(labels) -> str | None:
    """What keeps ``labels`` (a list or tuple) from naming a model's outputs, or None: one distinct, non-empty
    string each (an artifact's metadata and :class:`fer_edge.predict.Predictor`'s ``labels=`` are checked by it).
    Two equal names would merge their probabilities in a prediction's ``{label: probability}``."""
    if not isinstance(labels, (list, tuple)):
        return f"must be a list of class names, got {type(labels).__name__} {labels!r}"
    if not labels:
        return "must name at least one class, got none"
    bad = [x for x in labels if not isinstance(x, str) or not x.strip()]
    if bad:
        return f"must be non-empty strings, got {bad[0]!r} in {list(labels)!r}"
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        return f"must be distinct (one per model output), got {', '.join(map(repr, repeated))} more than once"
    return None


def check_normalization(normalization) -> Normalization:
    """A :class:`Normalization` or ``{"mean": .., "std": ..}`` -> a checked :class:`Normalization` of floats, or
    :class:`DataError` saying what is wrong (checked before anything converts it, which raised KeyError,
    ValueError or AttributeError). :func:`normalize` and :class:`fer_edge.predict.Predictor` take either form."""
    if isinstance(normalization, Normalization):
        d = {"mean": normalization.mean, "std": normalization.std}
    elif isinstance(normalization, dict):
        d = normalization
    else:
        raise DataError(f"normalization must be a fer_edge.preprocess.Normalization or {{'mean': .., 'std': ..}}, "
                        f"got {type(normalization).__name__} {normalization!r}")
    if (why := Normalization.problem(d)) is not None:
        raise DataError(f"normalization {why}")
    return Normalization(float(d["mean"]), float(d["std"]))


def load_image(image):
    """A path, PIL image or numpy array -> a loaded PIL image with EXIF orientation applied.

    Files, and PIL images straight from a file (``Image.open``'s, whose ``format`` is set), get
    ``ImageOps.exif_transpose``. A PIL image derived from one (converted, rotated, cropped, copied: PIL sets no
    ``format`` on those, though they keep the orientation tag) is taken as given: its pixels are the caller's, who
    may have turned them already (apply ``ImageOps.exif_transpose`` first where not). Arrays are taken as grayscale
    (H x W) or RGB(A) (H x W x 3/4). Pixel values are scaled to 8 bits by :func:`to_uint8`, for arrays and for
    high-bit-depth images alike (16-bit PNG/TIFF, 32-bit integer or float TIFF), which PIL's own ``convert("L")``
    would clip to white. Transparency (an alpha channel: RGBA, LA, PA, premultiplied RGBa/La; a palette or colour
    marked transparent: a GIF's, a PNG's ``tRNS``) is composited onto white, what image viewers show (see
    :func:`flatten_alpha`): whatever colour a file keeps under its transparent pixels never reaches the face
    detector or the model. A file of several frames (an animated GIF or WebP, a multi-page TIFF) gives its first
    frame (:func:`load_image_frames` says which of how many). A JPEG of more than :data:`LARGE_JPEG_PIXELS` (a
    108 or 200 MP phone photo) is decoded at 1/2, 1/4 or 1/8 of its width and height (so its size, and face boxes,
    are the reduced picture's). Raises :class:`DataError` for a file that is missing, empty or not an image (or too
    large: a decompression bomb), and for pixel values with no known range.
    """
    return load_image_frames(image)[0]


#: PIL formats whose extra frames are no other pictures (an MPO's are a phone photo's preview or depth map, a
#: PSD's are the layers of the composite read): a file of these is not said to have several frames.
_ONE_PICTURE_FORMATS = ("MPO", "PSD")


def _file_open(im) -> bool:
    """Whether the file of the PIL image ``im`` is still open (PIL keeps it as ``fp`` or, for files of several
    frames, ``_fp``; a closed image's raises on use)."""
    for name in ("fp", "_fp"):
        try:
            fp = getattr(im, name, None)
            if fp is not None and not fp.closed:
                return True
        except Exception:  # PIL's stand-in for a closed file raises on any use
            continue
    return False


def _frames(im) -> tuple[int, int]:
    """(frame index, frame count) of a PIL image from a file; (0, 1) for one picture, and for an image whose file
    is closed before its frames were counted (a GIF's or TIFF's count reads the file: it is not tried then, as a
    failed count would leave the image at another frame)."""
    if getattr(im, "format", None) in _ONE_PICTURE_FORMATS:
        return 0, 1
    try:
        if isinstance(getattr(type(im), "n_frames", None), property) and getattr(im, "_n_frames", None) is None \
                and not _file_open(im):
            return 0, 1
        n = int(getattr(im, "n_frames", 1) or 1)
        return (int(im.tell()) if n > 1 else 0), n
    except Exception:  # a damaged frame table: one picture, as it is read
        return 0, 1


def load_image_frames(image) -> tuple[object, int, int]:
    """:func:`load_image`, and which frame of the file it is: ``(image, frame, frames)``, ``frame`` counted from 0.

    A file of several frames (an animated GIF or WebP, an animated PNG, a multi-page TIFF) gives its first frame,
    ``(image, 0, n)``; a PIL image of one gives the frame it is at (``seek``); anything else ``(image, 0, 1)``
    (so does a phone's MPO JPEG, whose second frame is a preview or depth map, not another picture).
    """
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if path.is_dir():
            raise DataError(f"{path}: is a directory, not an image")
        try:
            empty = path.is_file() and path.stat().st_size == 0
        except OSError:
            empty = False  # Image.open says why
        if empty:
            raise DataError(f"{path}: cannot read image: the file is empty (0 bytes)")
        try:
            with _open_large_jpeg(path) or Image.open(path) as im:
                frame, frames = _frames(im)
                im = _rgb16_transparency(path, im)  # (before Pillow reduces it to 8 bits)
                im = ImageOps.exif_transpose(im)
                im.load()
                im = im.copy()
        except Image.DecompressionBombError as e:  # a PNG bomb, 100000 x 100000: refused before any pixel is read
            raise DataError(f"{path}: cannot read image: it is too large ({e})") from None
        except Exception as e:  # PIL raises many types for bad files
            raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
        try:
            return flatten_alpha(_eight_bit(_nonempty(im))), frame, frames
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
            raise DataError(f"cannot use an array of shape {tuple(image.shape)} as an image")
        return flatten_alpha(Image.fromarray(np.ascontiguousarray(to_uint8(arr)))), 0, 1
    if hasattr(image, "convert") and hasattr(image, "size"):
        try:  # the pixels of a lazily read image now: a closed file fails here, said as such (not as EXIF or resize)
            if callable(getattr(image, "load", None)):
                image.load()
        except Exception as e:  # PIL raises many types (a bare AssertionError for a closed file)
            raise DataError(f"cannot read the image's pixels ({type(e).__name__}: {e}): an image from Image.open "
                            "must be read (im.load()) before its file is closed, e.g. inside its with block") from None
        frame, frames = _frames(image)
        return flatten_alpha(_eight_bit(_nonempty(_upright(image)))), frame, frames
    raise DataError(f"cannot use an object of type {type(image).__name__} as an image")


#: The gray level transparent pixels are composited onto: white, what image viewers show.
ALPHA_BACKGROUND = 255


def flatten_alpha(im):
    """A PIL image with transparency composited onto white (:data:`ALPHA_BACKGROUND`); any other as it is.

    Transparency is an alpha band (RGBA, LA, PA, premultiplied RGBa) or a ``transparency`` entry (a palette image's
    transparent entries, as GIFs and palette PNGs keep them; an L, RGB or 1 image's transparent colour, a PNG's
    ``tRNS``). Grayscale images (LA, L, 1) come back as "L", the others as "RGB", each pixel
    ``round(colour * a + 255 * (1 - a))``: the same picture as ``Image.alpha_composite`` onto an opaque white
    image, and for an opaque pixel its own colour. So what a transparent pixel holds (black, white, any colour a
    program left there) makes no difference, and the picture is the one a viewer shows. PIL's own ``convert("L")``
    or ``convert("RGB")`` dropped the alpha instead (and warned, for a palette with transparency)."""
    from PIL import Image

    bands = im.getbands()
    if "A" not in bands and "a" not in bands and "transparency" not in im.info:
        return im
    if im.mode == "La":
        im = im.convert("LA")  # (PIL converts La to nothing else)
    gray = im.mode in ("LA", "L", "1")
    alpha = next((b for b in im.getbands() if b in ("A", "a")), None)
    if alpha is not None and "transparency" not in im.info and im.getchannel(alpha).getextrema() == (255, 255):
        # every pixel opaque: nothing to composite (a 12 MP opaque RGBA photo: ~30% of its load time saved)
        return im.convert("L" if gray else "RGB")
    clear = im.info.get("transparency")
    if im.mode == "RGB" and isinstance(clear, tuple) and len(clear) == 3 and max(clear) > 255:
        # a 16-bit RGB PNG's tRNS colour, read without the file (a PIL image given as it is): Pillow kept the high
        # byte of each channel, so that is what the colour is compared on (a file is compared on all 16 bits,
        # :func:`_rgb16_transparency`); compared as it is, it made pixels of another colour transparent
        im = im.copy()
        im.info["transparency"] = tuple(int(v) >> 8 for v in clear)
    rgba = im if im.mode in ("RGBA", "LA") else im.convert("LA" if gray else "RGBA")
    out = Image.new("L" if gray else "RGB", im.size, (ALPHA_BACKGROUND,) if gray else (ALPHA_BACKGROUND,) * 3)
    out.paste(rgba.convert(out.mode), mask=rgba.getchannel("A"))
    return out


def _rgb16_transparency(path: Path, im):
    """``im`` (a file's image, not yet loaded) as read, except a 16-bit RGB PNG with a transparent colour (``tRNS``):
    that comes back loaded as "RGBA", transparent where a pixel holds that colour in all 16 bits of each channel.

    Pillow reads such a file as 8-bit "RGB" (the high byte of each channel) and keeps the 16-bit colour in
    ``info["transparency"]``, which its ``convert("RGBA")`` compares with the 8-bit pixels: pixels of another colour
    became transparent, and the transparent ones did not. The low bytes are read by decoding the file a second
    time as little-endian (the same 6 bytes per pixel, so the same rows and filters, interlaced or not)."""
    from PIL import Image

    clear = im.info.get("transparency")
    tile = getattr(im, "tile", None) or []
    if getattr(im, "format", None) != "PNG" or im.mode != "RGB" or not isinstance(clear, tuple) or len(clear) != 3 \
            or len(tile) != 1 or tile[0][3] != "RGB;16B":
        return im
    with Image.open(path) as low:
        low.tile = [low.tile[0]._replace(args="RGB;16L")]
        low.load()
        lo = np.asarray(low, dtype=np.uint16)
    im.load()
    value = (np.asarray(im, dtype=np.uint16) << 8) | lo
    alpha = np.where((value == np.asarray(clear, dtype=np.uint16)).all(axis=-1), 0, 255).astype(np.uint8)
    rgba = im.copy()
    del rgba.info["transparency"]  # (its EXIF orientation kept: applied next, as for any file)
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


#: A JPEG of more pixels than this (a 108 or 200 MP phone photo; Pillow warns above 89 MP and refuses above 179 MP
#: as possible decompression bombs) is decoded at 1/2, 1/4 or 1/8 of its width and height.
LARGE_JPEG_PIXELS = 64_000_000
#: ... the first of those scales that leaves it at most this many pixels (a 12 to 24 MP photo: faces the detector
#: finds are still far larger than the 48x48 crop).
REDUCED_JPEG_PIXELS = 24_000_000


def _open_large_jpeg(path: Path):
    """A JPEG of more than :data:`LARGE_JPEG_PIXELS` opened to decode at reduced size (``draft``: the JPEG
    decoder's own scaling, which never holds the full-size picture in memory), else None (open it as usual).

    It is opened through Pillow's JPEG plugin, not ``Image.open``: that would warn on stderr or refuse a user's own
    photo as a decompression bomb by its full size, and raising ``Image.MAX_IMAGE_PIXELS`` instead would change it
    for the whole process. A JPEG cannot be a bomb once reduced: at 1/8 even its largest size, 65535 x 65535, is
    67 MP. Images up to the threshold are read as before, at full size."""
    from PIL import JpegImagePlugin

    try:
        with open(path, "rb") as f:
            if f.read(3) != b"\xff\xd8\xff":
                return None
    except OSError:
        return None  # Image.open says why
    try:
        im = JpegImagePlugin.JpegImageFile(path)
    except Exception:  # a damaged header: Image.open says why
        return None
    w, h = im.size
    if w * h <= LARGE_JPEG_PIXELS:
        im.close()
        return None
    scale = next((s for s in (2, 4) if w * h / (s * s) <= REDUCED_JPEG_PIXELS), 8)
    im.draft(im.mode, (w // scale, h // scale))
    return im


#: The EXIF tag holding an image's orientation.
EXIF_ORIENTATION = 0x0112


def _upright(im):
    """A PIL image straight from a file as displayed: ``ImageOps.exif_transpose`` of it when its EXIF orientation
    turns or flips it (the copy returned has no orientation tag, so it is not turned twice); ``im`` itself
    otherwise, not copied, and for an image derived from a file's (``format`` None: ``rotate``, ``transpose``,
    ``convert`` keep the tag, so a caller's own turn would be turned again). :class:`DataError` for an EXIF block
    PIL cannot read, as for a file."""
    from PIL import ImageOps

    if not hasattr(im, "getexif") or not getattr(im, "format", None):  # no PIL image, or not as read from a file
        return im
    try:
        if im.getexif().get(EXIF_ORIENTATION, 1) in (1, None):
            return im
        return ImageOps.exif_transpose(im)
    except Exception as e:  # PIL raises many types for a damaged EXIF block or image data
        raise DataError(f"cannot apply the image's EXIF orientation ({type(e).__name__}: {e})") from None


def _nonempty(im):
    """``im`` itself, or :class:`DataError` for an image with no pixels (0 x N), which would
    otherwise be resized from nothing and classified (or divide by zero in face detection)."""
    w, h = im.size
    if w < 1 or h < 1:
        raise DataError(f"the image is {w} x {h} pixels: there is no picture to classify")
    return im


#: PIL modes holding more than 8 bits per pixel (one channel); :func:`load_image` scales them to "L".
HIGH_DEPTH_MODES = ("I", "F")


def _eight_bit(im):
    """A PIL image in a high-bit-depth mode (``I;16*``, ``I``, ``F``) -> mode "L" scaled by
    :func:`to_uint8`; CIELAB (a TIFF's ``LAB``) -> its lightness channel, mode "L"; premultiplied
    ``La`` -> ``LA`` (PIL converts neither of the two to "L" or "RGB"); other images as they are. A high-bit-depth
    image with a transparent gray level (a 16-bit PNG's ``tRNS``) comes back as "LA", transparent there."""
    from PIL import Image

    if im.mode == "LAB":
        return im.getchannel("L")
    if im.mode == "La":
        return im.convert("LA")
    if im.mode not in HIGH_DEPTH_MODES and not im.mode.startswith("I;16"):
        return im
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        arr = arr.astype(np.uint16)  # I;16B reads as big-endian >u2: same values, native order
    out = Image.fromarray(to_uint8(arr))
    clear = im.info.get("transparency")
    if isinstance(clear, int) and not isinstance(clear, bool):
        alpha = Image.fromarray(np.where(arr == clear, 0, 255).astype(np.uint8))
        out = Image.merge("LA", [out, alpha])
    return out


#: A float image whose brightest value is at most this is a 0..1 image (a resize's overshoot past 1 included).
FLOAT_UNIT_MAX = 1.5
#: A 0..255 float image may overshoot 255 by this factor (a resize's), and is clipped; beyond it, refused.
FLOAT_OVERSHOOT = 1.1


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Pixel values of any numeric dtype -> uint8 0..255, or :class:`DataError` where the range is unknown.

    * uint8: as is; bool: 0 / 255;
    * uint16 (either byte order): the full 16-bit range, ``round(x / 257)`` (65535 -> 255), as for a 16-bit PNG;
    * other integers (PIL's 32-bit "I" mode, int16, ...): 0..255 as is, else 0..65535 as 16-bit;
    * floats: a 0..1 image when the maximum is at most 1.5 (scaled by 255), else a 0..255 image (a maximum
      above 255 * 1.1 is refused); NaN becomes 0, an all-NaN array is refused. A resize's overshoot past the
      top is clipped: a cubic resize of a 0..1 face goes past 1 (FER2013's ``val/angry/PublicTest_1460129.jpg``
      as float 0..1, upscaled 2x by ``cv2.resize(..., (96, 96), interpolation=cv2.INTER_CUBIC)``, spans
      -0.054..1.125), which would otherwise read as a black 0..255 picture (no 0..255 picture whose brightest
      pixel is 1.5 shows anything).

    Values below 0 are refused, not clipped, and so are integers above those ranges: they are most often
    images already normalised (mean subtracted: -1..1, -2..2, -120..135), which fer-edge would otherwise turn
    into a black or white picture and classify without a word. A resize's undershoot below 0 cannot be told
    from those, so the error says to clip raw pixels to the range first.
    """
    arr = np.asarray(arr)
    if arr.size == 0:  # (numpy's min of nothing raised a plain ValueError)
        raise DataError(f"cannot use an array of shape {tuple(arr.shape)} as an image: it has no pixels")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind not in "uif":
        raise DataError(f"cannot use pixel values of dtype {arr.dtype} as an image")
    if arr.dtype.kind == "f" and arr.size and np.isnan(arr).all():
        raise DataError("every pixel value is NaN: there is no picture to classify")
    if arr.dtype.kind == "f":
        x = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
    elif arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        x = arr.astype(np.float64)  # (as int64 a uint64 above 2**63 would read as negative)
    else:
        x = arr.astype(np.int64)
    # the range of the values given (NaN, read as 0 above, left out: it is no value of the picture's)
    lo, hi = (float(np.nanmin(arr)), float(np.nanmax(arr))) if arr.dtype.kind == "f" else (float(x.min()),
                                                                                            float(x.max()))
    if lo < 0 or not np.isfinite(hi):
        raise DataError(
            f"pixel values span {lo:g}..{hi:g}: expected 0..1 or 0..255 (or 0..65535 for 16-bit); "
            "pass raw pixels, fer-edge normalises them itself"
            + ("; if these are raw pixels a resize pushed below 0 (a cubic or Lanczos filter's undershoot), "
               "clip them to the range first (np.clip)" if arr.dtype.kind == "f" and np.isfinite(hi) and hi > 0 else "")
        )
    if arr.dtype.kind == "f":
        if hi <= FLOAT_UNIT_MAX:  # a 0..1 image, up to a resize's overshoot past 1
            x = x * 255.0
        elif hi > 255.0 * FLOAT_OVERSHOOT:
            raise DataError(f"float pixel values span {lo:g}..{hi:g}: expected 0..1 or 0..255")
    elif (arr.dtype.kind == "u" and arr.dtype.itemsize == 2) or hi > 255:  # uint16 in either byte order
        if hi > 65535:
            raise DataError(f"integer pixel values span {lo:g}..{hi:g}: expected 0..255 or 0..65535")
        x = x / 257.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)



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


def _not_uint8(dtype) -> DataError:
    """What :func:`normalize` and :func:`normalize_torch` say of pixels that are not uint8."""
    return DataError(f"face crops must be uint8 {IMAGE_SIZE} x {IMAGE_SIZE} pixels (0..255), got dtype {dtype}: pass "
                     "uint8 pixels, or bring them there first with fer_edge.preprocess.to_gray48 (any image, any "
                     "size) or to_uint8 (pixel values of another dtype)")


def normalize(gray: np.ndarray, norm: Normalization | dict) -> np.ndarray:
    """uint8 N x 48 x 48 (or 48 x 48) -> float32 N x 1 x 48 x 48, normalised with ``norm``: a
    :class:`Normalization` or ``{"mean": .., "std": ..}`` (an artifact's ``normalization`` metadata, decoded).

    Other dtypes are refused (:class:`DataError`): a 0..1 float image would be divided by 255 once more (a
    near-constant input, classified without a word), negative or 16-bit integers would be wrapped or out of range.
    """
    norm = check_normalization(norm)
    gray = np.asarray(gray)
    if gray.dtype != np.uint8:
        raise _not_uint8(gray.dtype)
    if gray.ndim == 2:
        gray = gray[None]
    if gray.ndim != 3 or gray.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"expected N x {IMAGE_SIZE} x {IMAGE_SIZE} images, got shape {tuple(gray.shape)}")
    x = gray.astype(np.float32)[:, None] / 255.0
    return ((x - norm.mean) / norm.std).astype(np.float32)


def normalize_torch(gray, norm: Normalization | dict):
    """The same as :func:`normalize` for a uint8 torch tensor: 48 x 48, N x 48 x 48 or N x 1 x 48 x 48 ->
    float32 N x 1 x 48 x 48, normalised; other dtypes and shapes are refused (:class:`DataError`)."""
    import torch

    norm = check_normalization(norm)

    if not isinstance(gray, torch.Tensor):  # (a numpy array's uint8 is no torch.uint8: "must be uint8, got uint8")
        raise DataError(f"normalize_torch takes a torch tensor, got {type(gray).__name__}: use normalize for numpy "
                        "arrays")
    if gray.dtype != torch.uint8:
        raise _not_uint8(gray.dtype)
    x = gray.float()
    if x.dim() == 2:
        x = x[None]
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"expected {IMAGE_SIZE} x {IMAGE_SIZE}, N x {IMAGE_SIZE} x {IMAGE_SIZE} or N x 1 x "
                        f"{IMAGE_SIZE} x {IMAGE_SIZE} images, got shape {tuple(gray.shape)}")
    return (x / 255.0 - norm.mean) / norm.std
