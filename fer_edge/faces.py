"""Face finding for ``fer-edge predict``: image loading, OpenCV's frontal-face Haar detector, crops.

Every box is ``(x, y, w, h)`` in pixels of the image *as displayed*, i.e. after its EXIF
orientation has been applied (:func:`load_image` does that, like
:func:`fer_edge.preprocess.to_gray48`). A crop is a PIL image of the original colours;
turning it into the 48x48 model input is left to :func:`fer_edge.preprocess.to_gray48`,
the same path training used.

The detector is OpenCV's ``haarcascade_frontalface_default.xml`` run by
``cv2.CascadeClassifier``: both ship inside ``opencv-python(-headless)`` 4.x, no download.
OpenCV 5.0 moved the cascade classifier and its XML files to opencv-contrib and the 5.0
wheels ship an empty ``cv2.data`` folder, so with OpenCV 5 :class:`FaceDetector` raises a
:class:`~fer_edge.errors.RuntimeUnavailableError` that says so (install
``opencv-python-headless<5``, point ``FER_EDGE_HAAR_CASCADE`` at the XML when the
classifier exists but the file does not, or skip detection with ``--no-detect-faces``).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_edge.errors import RuntimeUnavailableError
from fer_edge.preprocess import load_image  # noqa: F401  (the one image loader; faces.load_image stays importable)

#: The cascade file used when none is given.
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
#: Environment variable naming a cascade XML file (overrides the search in the cv2 package).
CASCADE_ENV = "FER_EDGE_HAAR_CASCADE"
#: Extra border added on each side of a detected box, as a fraction of its size.
DEFAULT_MARGIN = 0.1
#: File suffixes treated as images when a directory is scanned (those Pillow reads these formats under).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: The detector's working copy of a photo holds at most this many pixels (a 4:3 photo is shrunk to 1280 x 960);
#: its cost grows with them.
DEFAULT_MAX_PIXELS = 1280 * 960
#: The smallest face the Haar cascade finds, in pixels of the copy it searches (its window is 24 x 24).
CASCADE_WINDOW = 24
#: With ``min_face``, the working copy is kept large enough that a face of that size spans this many pixels: the
#: cascade finds faces reliably from about twice its window (at 35 pixels it found 0 to 3 of ten, at 48 all ten).
MIN_FACE_SPAN = 48
#: ... and faces down to this share of ``min_face`` are kept (a search starting at the face's own size drops most
#: of the overlapping hits a face needs to count as one).
MIN_FACE_SLACK = 0.8
#: The default smallest face, as a share of the working copy's shorter side (a 4000 x 3000 photo: 120 pixels).
DEFAULT_MIN_FACE_SHARE = 0.04


@dataclass(frozen=True)
class Box:
    """A face box in pixels: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    def to_list(self) -> list[int]:
        return [int(self.x), int(self.y), int(self.w), int(self.h)]

    @property
    def area(self) -> int:
        return int(self.w) * int(self.h)

    def expand(self, margin: float, width: int, height: int) -> "Box":
        """Grow by ``margin`` * size on every side, clipped to a ``width`` x ``height`` image."""
        dx, dy = round(self.w * margin), round(self.h * margin)
        x0, y0 = max(0, self.x - dx), max(0, self.y - dy)
        x1, y1 = min(width, self.x + self.w + dx), min(height, self.y + self.h + dy)
        return Box(x0, y0, max(1, x1 - x0), max(1, y1 - y0))


def crop(image, box: Box, margin: float = DEFAULT_MARGIN):
    """The face crop (a PIL image in the original mode) of ``box`` grown by ``margin``."""
    image = load_image(image)
    b = box.expand(margin, *image.size)
    return image.crop((b.x, b.y, b.x + b.w, b.y + b.h))


def _cv2():
    """OpenCV, or a RuntimeUnavailableError saying why it cannot be imported (a missing libGL, say)."""
    try:
        import cv2
    except ImportError as e:
        raise RuntimeUnavailableError(
            f"OpenCV cannot be imported ({e}): install 'opencv-python-headless<5' (the full "
            "opencv-python needs libGL), or pass --no-detect-faces for images that are already face crops"
        ) from e
    return cv2


def find_cascade(path: str | os.PathLike | None = None) -> Path:
    """The cascade XML: ``path``, else ``$FER_EDGE_HAAR_CASCADE``, else the file inside the cv2 package."""
    if path is None:
        path = os.environ.get(CASCADE_ENV) or None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise RuntimeUnavailableError(f"{p}: Haar cascade file not found")
        return p
    cv2 = _cv2()

    candidates = []
    data = getattr(cv2, "data", None)
    if data is not None and getattr(data, "haarcascades", None):
        candidates.append(Path(data.haarcascades) / DEFAULT_CASCADE)
    pkg = Path(cv2.__file__).resolve().parent
    candidates += [pkg / "data" / DEFAULT_CASCADE, *sorted(pkg.rglob(DEFAULT_CASCADE))]
    for c in candidates:
        if c.is_file():
            return c
    raise RuntimeUnavailableError(
        f"OpenCV {cv2.__version__} ships no {DEFAULT_CASCADE} (OpenCV 5 moved the Haar cascades to "
        f"opencv-contrib and its wheels leave cv2/data empty): install 'opencv-python-headless<5', "
        f"set {CASCADE_ENV} to the XML file, or pass --no-detect-faces for images that are face crops"
    )


def _cascade_class():
    cv2 = _cv2()

    cls = getattr(cv2, "CascadeClassifier", None)
    if cls is None:  # opencv-contrib 5.x keeps it in xobjdetect
        cls = getattr(getattr(cv2, "xobjdetect", None), "CascadeClassifier", None)
    if cls is None:
        raise RuntimeUnavailableError(
            f"OpenCV {cv2.__version__} has no Haar cascade detector (cv2.CascadeClassifier moved to "
            "opencv-contrib in OpenCV 5): install 'opencv-python-headless<5', or pass --no-detect-faces "
            "for images that are already face crops"
        )
    return cls


def detector_available() -> tuple[bool, str]:
    """(True, "") when :class:`FaceDetector` works here, else (False, reason)."""
    try:
        _cascade_class()
        find_cascade()
    except RuntimeUnavailableError as e:
        return False, str(e)
    return True, ""


def check_min_face(min_face) -> int | None:
    """``min_face`` (the smallest face to find, in pixels of the image) as an int, None for the default, or
    :class:`DataError` for anything but a positive whole number."""
    from fer_edge.errors import DataError

    if min_face is None:
        return None
    if isinstance(min_face, bool) or not isinstance(min_face, (int, np.integer)) or min_face < 1:
        raise DataError(f"min_face must be a positive whole number of pixels (the smallest face to find), got "
                        f"{min_face!r}")
    return int(min_face)


class FaceDetector:
    """OpenCV's frontal-face Haar cascade with settings for photos of any size.

    Detection runs on a grayscale copy, histogram-equalised and shrunk by one factor on both sides to at most
    ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`: a 4:3 photo becomes 1280 x 960, a 12000 x 600
    panorama 4957 x 248, so a face as tall as a wide picture is not shrunk away), or, when only ``max_side`` is
    given, to at most that on its longer side (the rule before ``max_pixels``); boxes are scaled back to the full
    image. The smallest face found is, by default, ``max(24, 4%`` of that copy's shorter side``)`` pixels of the
    copy (120 pixels of a 4000 x 3000 photo). ``min_face`` sets it in pixels of the image instead (a photo of a
    crowd): the copy is then shrunk no further than keeps such a face :data:`MIN_FACE_SPAN` pixels wide (never
    enlarged: faces under 24 pixels of the image are never found), which costs more time on a large photo, and
    faces down to :data:`MIN_FACE_SLACK` of it are kept. ``min_size`` is the older setting of the smallest face
    in pixels of the working copy. Faces come back largest first. One detector may be shared by threads: each
    thread runs its own copy of the cascade.
    """

    def __init__(self, cascade: str | os.PathLike | None = None, scale_factor: float = 1.1,
                 min_neighbors: int = 5, min_size: int | None = None, max_side: int | None = None,
                 max_pixels: int | None = None, min_face: int | None = None):
        self._cascade_cls = _cascade_class()
        self.cascade_path = find_cascade(cascade)
        # one classifier per thread: cv2.CascadeClassifier is not thread-safe (a detector shared by an app's
        # threads gave wrong boxes or raised cv2.error); loading one takes ~60 ms, and unlike a lock around
        # detectMultiScale, per-thread classifiers let the threads detect in parallel
        self._local = threading.local()
        self._classifier()  # load it now: a bad cascade file fails here, not at the first image
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.max_side = max_side
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None and max_side is None else max_pixels
        self.min_face = check_min_face(min_face)

    def _classifier(self):
        """This thread's ``cv2.CascadeClassifier``, loaded on its first use in the thread."""
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = self._cascade_cls(str(self.cascade_path))
            if cascade.empty():
                raise RuntimeUnavailableError(f"{self.cascade_path}: OpenCV could not load this Haar cascade")
            self._local.cascade = cascade
        return cascade

    def working_scale(self, width: int, height: int, min_face: int | None = None) -> float:
        """The factor (at most 1) a ``width`` x ``height`` image is shrunk by before the cascade searches it."""
        scale = 1.0
        if self.max_pixels:
            scale = min(scale, (self.max_pixels / max(1, width * height)) ** 0.5)
        if self.max_side:
            scale = min(scale, self.max_side / max(width, height))
        min_face = check_min_face(min_face) or self.min_face
        if min_face is not None:  # shrunk no further than keeps a face of min_face pixels MIN_FACE_SPAN wide
            scale = min(1.0, max(scale, MIN_FACE_SPAN / min_face))
        return scale

    def detect(self, image, min_face: int | None = None) -> list[Box]:
        """The frontal faces in ``image`` (path, PIL image or array), largest first; ``min_face`` (pixels of the
        image) overrides the detector's own for this call."""
        cv2 = _cv2()

        min_face = check_min_face(min_face) or self.min_face
        image = load_image(image)
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
        h, w = gray.shape
        scale = self.working_scale(w, h, min_face)
        if scale < 1.0:
            gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                              interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        if min_face is not None:
            min_size = max(CASCADE_WINDOW, round(MIN_FACE_SLACK * min_face * scale))
        else:
            min_size = self.min_size or max(CASCADE_WINDOW, round(DEFAULT_MIN_FACE_SHARE * min(gray.shape)))
        found = self._classifier().detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size),
        )
        sx, sy = gray.shape[1] / w, gray.shape[0] / h  # (the rounded copy's own factors)
        boxes = []
        for x, y, bw, bh in (np.asarray(found).reshape(-1, 4) if len(found) else []):
            bx, by = min(w - 1, round(x / sx)), min(h - 1, round(y / sy))
            boxes.append(Box(bx, by, max(1, min(round(bw / sx), w - bx)), max(1, min(round(bh / sy), h - by))))
        return sorted(boxes, key=lambda b: (-b.area, b.x, b.y))


_DEFAULT_DETECTOR: FaceDetector | None = None
_DEFAULT_LOCK = threading.Lock()


def default_detector() -> FaceDetector:
    """A shared :class:`FaceDetector` with default settings, safe to use from many threads (each thread loads its
    own copy of the cascade on first use)."""
    global _DEFAULT_DETECTOR
    with _DEFAULT_LOCK:  # two threads' first calls build one detector, not two
        if _DEFAULT_DETECTOR is None:
            _DEFAULT_DETECTOR = FaceDetector()
        return _DEFAULT_DETECTOR


def detect_faces(image, detector: FaceDetector | None = None, min_face: int | None = None) -> list[Box]:
    """Boxes of the frontal faces in ``image`` (path, PIL image or array), largest first; ``min_face``: see
    :class:`FaceDetector`."""
    detector = detector or default_detector()
    return detector.detect(image) if min_face is None else detector.detect(image, min_face=min_face)
