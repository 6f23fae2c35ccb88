"""Prediction on photos with any fer-edge model: a checkpoint or any exported artifact.

Usage::

    import fer_edge

    predictor = fer_edge.load("exports/fer_small_fp32.onnx")  # or a .pt / .xml / .ts / .mlpackage / shipped name
    predictor.predict("face.png").label                        # the whole image is the face -> "happy"
    for p in predictor.detect_and_predict("group.jpg"):        # find faces first
        print(p.box, p.label, p.probabilities)

Labels and normalisation come from the artifact's embedded metadata (the runtime's
``metadata()``), pixels go through :func:`fer_edge.preprocess.to_gray48` and
:func:`fer_edge.preprocess.normalize` -- the one preprocessing path of training, eval,
export validation and bench -- so every artifact of a model gives the same answers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from fer_edge.constants import IMAGE_SIZE
from fer_edge.errors import ArtifactError, DataError, FerEdgeError
from fer_edge.faces import DEFAULT_MARGIN, Box, FaceDetector, IMAGE_SUFFIXES, check_min_face, load_image
from fer_edge.preprocess import Normalization, check_normalization, labels_problem, load_image_frames

#: How many faces one runtime call classifies at most.
MAX_BATCH = 64


@dataclass(eq=False)
class Prediction:
    """One classified face.

    ``probabilities`` maps each label to its softmax probability; ``probs`` is the same
    as a float32 array in label order; ``box`` is set when the face came from detection.
    """

    label: str
    index: int
    score: float
    probabilities: dict[str, float]
    probs: np.ndarray = field(repr=False)
    logits: np.ndarray = field(repr=False)
    box: Box | None = None

    def to_dict(self) -> dict:
        return {
            "box": self.box.to_list() if self.box is not None else None,
            "label": self.label,
            "index": self.index,
            "score": round(float(self.score), 6),
            "probabilities": {k: round(float(v), 6) for k, v in self.probabilities.items()},
        }


@dataclass(eq=False)
class ImageResult:
    """What prediction found in one input: its faces, or why there are none.

    ``status`` is ``"ok"`` (at least one face), ``"no_face"`` (the image was read, no face
    was found: a result, not an error) or ``"error"`` (``error`` says why). ``frames`` is how many frames the file
    holds (an animated GIF or WebP, a multi-page TIFF: more than 1) and ``frame`` the one classified (from 0: the
    first); ``note`` then says so ("frame 1 of 2 classified").
    """

    source: str
    faces: list[Prediction] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    error: str | None = None
    image: object = field(default=None, repr=False)  # the loaded PIL image, for annotation
    frames: int | None = None
    frame: int = 0

    @property
    def note(self) -> str | None:
        """What to know about this result besides its faces: which frame of a file of several was classified."""
        if self.frames is not None and self.frames > 1:
            return f"frame {self.frame + 1} of {self.frames} classified"
        return None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "ok" if self.faces else "no_face"

    def to_dict(self) -> dict:
        return {
            "image": self.source,
            "status": self.status,
            "width": self.width,
            "height": self.height,
            "faces": [f.to_dict() for f in self.faces],
            "error": self.error,
            "frames": self.frames,
            "note": self.note,
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def check_margin(margin: float) -> float:
    """A face box's margin: the share of its width and height added on each side (0 keeps the box as found)."""
    try:
        m = float(margin)
    except (TypeError, ValueError):
        raise DataError(f"margin must be a number, got {margin!r}") from None
    if not (np.isfinite(m) and 0 <= m <= 1):
        raise DataError(f"margin must be a finite number from 0 to 1 (the share of the face box added on each "
                        f"side; default {DEFAULT_MARGIN}), got {margin!r}")
    return m


def check_labels(labels, where: str = "labels") -> tuple[str, ...]:
    """``labels`` as a tuple of class names, or :class:`DataError`: a list, tuple or other sequence (not a str,
    whose characters would each become a label) of distinct, non-empty strings, one per model output (the count is
    checked against the model's outputs when it runs). Two equal names would merge their probabilities in
    :attr:`Prediction.probabilities` (a dict), so an answer would sum to less than 1 without a word."""
    if isinstance(labels, (str, bytes, dict)) or not isinstance(labels, Iterable):
        raise DataError(f"{where} must be a list of class names, one per model output, got "
                        f"{type(labels).__name__} {labels!r}")
    labels = tuple(labels)
    if (why := labels_problem(labels)) is not None:
        raise DataError(f"{where} {why}")
    return labels  # (strings: labels_problem refuses anything else)


class Predictor:
    """Classifies 48x48 face crops (and finds faces in photos) with one loaded runtime.

    Build one with :func:`load`. ``labels`` and ``normalization`` default to the ones
    embedded in the artifact.
    """

    def __init__(self, runtime, labels: Iterable[str] | None = None,
                 normalization: Normalization | dict | None = None,
                 detector: FaceDetector | None = None, margin: float = DEFAULT_MARGIN):
        self.runtime = runtime
        self.path = Path(getattr(runtime, "path", "") or "")
        self.metadata: dict = {}
        if labels is None or normalization is None:
            from fer_edge.exporters.metadata import ArtifactMeta

            self.metadata = dict(runtime.metadata() or {})
            meta = ArtifactMeta.from_dict(self.metadata, where=str(self.path))
            labels = meta.labels if labels is None else labels
            normalization = meta.normalization if normalization is None else normalization
        self.labels: tuple[str, ...] = check_labels(labels)
        self.normalization: Normalization = check_normalization(normalization)
        #: what a user should know before trusting the answers (:func:`load` adds one for an artifact its export's
        #: parity gate failed); the CLI prints each as a warning
        self.warnings: list[str] = []
        self._detector = detector
        self.margin = check_margin(margin)

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, runtime={self.runtime_name!r})"

    @property
    def runtime_name(self) -> str:
        return getattr(self.runtime, "name", type(self.runtime).__name__)

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            from fer_edge.faces import default_detector

            self._detector = default_detector()
        return self._detector

    # -- the numeric core ---------------------------------------------------------------
    def logits(self, gray: np.ndarray) -> np.ndarray:
        """uint8 N x 48 x 48 (or 48 x 48) face crops -> float32 N x num_classes logits.

        Other dtypes raise :class:`~fer_edge.errors.DataError` (see :func:`fer_edge.preprocess.normalize`): use
        :meth:`predict_batch` for images of other sizes or pixel ranges. Raises
        :class:`~fer_edge.errors.ArtifactError` when the model's outputs are not finite (NaN, inf).
        """
        from fer_edge.preprocess import normalize

        x = normalize(gray, self.normalization)
        outs = []
        for i in range(0, len(x), MAX_BATCH):
            out = np.asarray(self.runtime.run(np.ascontiguousarray(x[i:i + MAX_BATCH])), dtype=np.float32)
            out = out.reshape(out.shape[0], -1)
            self._check_finite(out)
            outs.append(out)
        logits = np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)
        if logits.shape[1] != len(self.labels):
            raise ArtifactError(
                f"{self.path}: the model returns {logits.shape[1]} scores but the predictor has {len(self.labels)} "
                f"labels ({', '.join(self.labels)})"
            )
        return logits

    def _check_finite(self, out: np.ndarray) -> None:
        """Refuse a runtime call's logits that are not all finite: the model is broken (NaN weights, a bad
        export...), and a label with a NaN score is no answer. One check per call, so it costs nothing."""
        finite = np.isfinite(out)
        if finite.all():
            return
        bad = int((~finite).any(axis=1).sum())
        kinds = " and ".join(k for k, hit in (("NaN", np.isnan(out).any()), ("inf", np.isinf(out).any())) if hit)
        raise ArtifactError(
            f"{self.path}: the model's outputs (logits) are not finite numbers ({kinds}) for {bad} of "
            f"{len(out)} face{'s' if len(out) != 1 else ''} in a batch, so it cannot classify anything: the model "
            f"is broken (NaN or inf weights? a failed training run or export?)"
        )

    def _predictions(self, gray: np.ndarray, boxes=None) -> list[Prediction]:
        logits = self.logits(gray)
        probs = softmax(logits)
        out = []
        for i, (lg, pr) in enumerate(zip(logits, probs)):
            k = int(np.argmax(pr))
            out.append(Prediction(
                label=self.labels[k], index=k, score=float(pr[k]),
                probabilities={lbl: float(p) for lbl, p in zip(self.labels, pr)},
                probs=pr, logits=lg, box=boxes[i] if boxes is not None else None,
            ))
        return out

    # -- public API ---------------------------------------------------------------------
    def predict(self, image) -> Prediction:
        """Classify one face crop: a path, PIL image or numpy array (grayscale or RGB, any size).

        The whole image is the face; it becomes 48x48 grayscale through
        :func:`fer_edge.preprocess.to_gray48`. Use :meth:`detect_and_predict` for photos.
        """
        from fer_edge.preprocess import to_gray48

        return self._predictions(to_gray48(image)[None])[0]

    def predict_batch(self, faces) -> list[Prediction]:
        """Classify many face crops (paths, PIL images, arrays, or an N x 48 x 48 or N x H x W x 1/3/4 array).

        An array of N images (N x 48 x 48, or N x H x W x 1/3/4) is scaled to 8 bits as one
        (:func:`fer_edge.preprocess.to_uint8`), so a dark face in a float batch of 0..255 values is not
        mistaken for a 0..1 image, and an N x 48 x 48 x 1 array gets the answers of the same N x 48 x 48 one.
        A face whose pixel values are all NaN is refused, naming its index. The items of a list (or any other
        sequence) are scaled one by one, each as :meth:`predict` would; one that cannot be read is refused,
        naming its index.
        """
        from fer_edge.preprocess import to_gray48, to_uint8

        if isinstance(faces, (str, os.PathLike, bytes)) or not hasattr(faces, "__iter__"):
            raise DataError(f"predict_batch takes a sequence of face crops (or an N x {IMAGE_SIZE} x {IMAGE_SIZE} "
                            f"array), got {type(faces).__name__}: use predict() for one image")
        if isinstance(faces, np.ndarray):
            if faces.ndim == 4 and faces.shape[3] not in (1, 3, 4):
                raise DataError(f"predict_batch takes N x H x W x 1/3/4 arrays (N grayscale or RGB(A) images), got "
                                f"shape {tuple(faces.shape)}")
            if not (faces.ndim == 3 and faces.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)) and faces.ndim != 4:
                # a 3-D array of another size is one image (H x W x 3 would otherwise be H images of W x 3)
                grays = faces.ndim == 3 and faces.shape[2] not in (3, 4)  # N x H x W, not H x W x 3/4: say how
                raise DataError(f"predict_batch takes N x {IMAGE_SIZE} x {IMAGE_SIZE} or 4-D arrays (N images), got "
                                f"shape {tuple(faces.shape)}: for one image use predict()"
                                + ("; for N grayscale images of another size pass x[..., None] (N x H x W x 1)"
                                   if grays else ""))
            if not len(faces):
                return []
            if not faces.size:  # N images of no pixels (N x 0 x W x 3)
                raise DataError(f"cannot use an array of shape {tuple(faces.shape)} as images: they have no pixels")
            if faces.dtype.kind == "f":
                blank = np.isnan(faces).reshape(len(faces), -1).all(axis=1)
                if blank.any():
                    which = np.flatnonzero(blank)
                    shown = ", ".join(map(str, which[:10])) + (", ..." if len(which) > 10 else "")
                    raise DataError(f"face{'s' if len(which) > 1 else ''} {shown} of the batch: every pixel value is "
                                    "NaN: there is no picture to classify")
            gray = to_uint8(faces)  # one pixel range for the whole batch, not one per image
            if gray.ndim == 3:
                return self._predictions(gray)
            faces = list(gray)
        faces = list(faces)
        if not faces:
            return []
        gray = []
        for i, f in enumerate(faces):
            try:
                gray.append(to_gray48(f))
            except DataError as e:  # which of the N: a path names itself, an array or PIL image does not
                raise DataError(f"face {i} of the batch: {e}") from None
        return self._predictions(np.stack(gray))

    def detect_and_predict(self, image, margin: float | None = None, min_face: int | None = None
                           ) -> list[Prediction]:
        """Find the frontal faces in a photo and classify each; largest face first.

        Each :class:`Prediction` has its ``box``, in pixels of the image as :func:`~fer_edge.preprocess.load_image`
        takes it (a file, or a PIL image straight from one, with its EXIF orientation applied).
        ``min_face`` is the smallest face to look for, in those pixels (default: the detector's, 4% of the
        photo's shorter side; see :class:`~fer_edge.faces.FaceDetector`); a smaller one finds the faces of a crowd
        in a large photo, at more cost. Returns an empty list when no face is found.
        """
        return self._detect_and_predict(load_image(image), margin, min_face)

    def _detect_and_predict(self, img, margin: float | None = None, min_face: int | None = None
                            ) -> list[Prediction]:
        from fer_edge.faces import crop
        from fer_edge.preprocess import to_gray48

        margin = self.margin if margin is None else check_margin(margin)
        boxes = self.detector.detect(img, min_face=min_face) if min_face is not None else self.detector.detect(img)
        if not boxes:
            return []
        gray = np.stack([to_gray48(crop(img, b, margin)) for b in boxes])
        return self._predictions(gray, boxes)

    def predict_image(self, source, detect_faces: bool = True, margin: float | None = None,
                      keep_image: bool = False, min_face: int | None = None) -> ImageResult:
        """Everything ``fer-edge predict`` reports for one input; never raises for a bad image.

        Failures (unreadable file, ...) come back as ``status == "error"`` with a message. A file of several
        frames (an animated GIF or WebP, a multi-page TIFF) has its first frame classified, and the result says so
        (``frames``, ``note``). Errors of the setup (no face detector on this machine, a broken model) still raise,
        and so do a bad ``margin`` or ``min_face`` (:class:`DataError`, with or without ``detect_faces``): they are
        the call's mistake, not the image's.
        """
        from fer_edge.preprocess import to_gray48

        if margin is not None:
            margin = check_margin(margin)
        min_face = check_min_face(min_face)
        name = str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"
        try:
            img, frame, frames = load_image_frames(source)
        except DataError as e:
            return ImageResult(name, error=str(e))
        w, h = img.size
        try:
            if detect_faces:
                faces = self._detect_and_predict(img, margin, min_face)
            else:
                faces = self._predictions(to_gray48(img)[None])
        except DataError as e:
            return ImageResult(name, width=w, height=h, error=str(e), frames=frames, frame=frame)
        return ImageResult(name, faces=faces, width=w, height=h, image=img if keep_image else None, frames=frames,
                           frame=frame)

    def describe(self) -> dict:
        return {
            "model": self.metadata.get("model"),
            "path": str(self.path),
            "runtime": self.runtime_name,
            "labels": list(self.labels),
            "normalization": self.normalization.to_dict(),
        }


# -- loading ----------------------------------------------------------------------------
def load(path: str | os.PathLike | None = None, runtime: str | None = None, device: str | None = None,
         threads: int | None = None, *, runtime_option: str = "the runtime= argument", **options) -> Predictor:
    """A :class:`Predictor` for a checkpoint (``.pt``), a shipped model name, or an exported artifact.

    ``path`` None means the shipped default model. The runtime is chosen from the file type
    (the targets table: ``.onnx`` onnxruntime, ``.xml`` openvino, ``.ts`` torchscript,
    ``.mlpackage`` coreml, ``.pt`` pytorch) unless ``runtime`` names one; ``device``,
    ``threads`` and ``options`` go to the runtime. ``runtime_option`` is how an error names the
    ``runtime`` choice (the CLI passes ``"--runtime"``).
    """
    from fer_edge.runtimes import load_runtime
    from fer_edge.targets import find_target
    from fer_edge.weights import PRETRAINED, resolve_checkpoint

    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ArtifactError(f"fer_edge.load takes a path or a shipped model name (or None), not a "
                            f"{type(path).__name__}: {path!r}")
    if path is not None and not str(path).strip():  # Path("") is the current folder
        raise ArtifactError("the model name is empty: give a checkpoint, an exported artifact or a shipped model "
                            "name (or None for the shipped default)")
    if path is not None and not Path(path).exists() and find_target(path) is not None:
        raise ArtifactError(f"{path}: no such file")
    if path is not None and str(path) not in PRETRAINED and Path(path).is_dir() and find_target(path) is None:
        raise ArtifactError(_folder_hint(Path(path)))  # (a shipped name wins over a folder of that name)
    p = resolve_checkpoint(path)
    try:
        rt = load_runtime(p, runtime=runtime, device=device, threads=threads, runtime_option=runtime_option,
                          **options)
    except FerEdgeError:
        raise
    except Exception as e:  # runtime libraries raise their own types for bad files
        raise ArtifactError(f"{p}: cannot load it ({type(e).__name__}: {e})") from None
    predictor = Predictor(rt)
    gate = export_gate_failure(p)
    if gate is not None:
        predictor.warnings.append(gate)
    return predictor


def _platforms(target) -> str:
    names = {"darwin": "macOS", "linux": "Linux", "win": "Windows"}
    return " or ".join(names.get(p, p) for p in target.platforms)


def _folder_hint(folder: Path) -> str:
    """What to pass instead of a folder (one model is run, not a folder of them): an export folder's artifacts,
    a run folder's checkpoints."""
    from fer_edge.targets import find_target

    targets = {q.name: find_target(q) for q in folder.iterdir() if not q.name.startswith(".")}
    files = [n for n, t in targets.items() if t is not None and not n.lower().endswith("_logits.mlpackage")
             or Path(n).suffix.lower() in (".pt", ".pth")]
    here = {n for n in files if targets[n] is None or targets[n].runs_here()}
    # a model that runs on this machine first (a Core ML package needs macOS), then the usual picks
    files.sort(key=lambda n: (n not in here, n != "best.pt", not n.endswith("_fp32.onnx"), n))
    if not files:
        return (f"{folder} is a folder without a model file: give a checkpoint (.pt), an exported artifact "
                "(.onnx, .xml, .ts, .mlpackage) or a shipped model name")
    shown = [n if n in here else f"{n} (runs on {_platforms(targets[n])})" for n in files]
    held = f"{', '.join(shown[:6])}{', ...' if len(shown) > 6 else ''}"
    if files[0] not in here:
        return (f"{folder} is a folder, and none of the models in it runs on this machine (it holds {held}): give "
                "a checkpoint (.pt), an artifact that runs here (.onnx, .xml, .ts) or a shipped model name")
    return f"{folder} is a folder: give one model file in it, e.g. {folder / files[0]} (it holds {held})"


def export_gate_failure(path: str | os.PathLike) -> str | None:
    """A warning when the ``manifest.json`` beside the artifact ``path`` records that it failed the parity gate
    of the export that wrote it (its answers may differ from the model's), or when the file is no longer the one
    the manifest describes (its recorded gate result, passed or failed, does not apply); None otherwise.

    A missing or unreadable manifest, or one that does not list the file, gives None: predicting does not verify
    exports (``fer-edge bench`` does).
    """
    from fer_edge.errors import FerEdgeError
    from fer_edge.exporters.manifest import MANIFEST_NAME, files_unchanged, load_manifest

    p = Path(path)
    manifest = p.parent / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        entries = load_manifest(manifest).get("artifacts") or []
    except FerEdgeError:
        return None
    entry = next((e for e in entries if isinstance(e, dict) and e.get("file") == p.name), None)
    validation = (entry or {}).get("validation")
    if entry is not None and entry.get("files"):
        try:
            changed = files_unchanged(entry, p.parent)
        except (KeyError, TypeError, OSError):  # a hand-edited manifest: nothing to say, as when unreadable
            changed = None
        if changed is not None:
            status = validation.get("status") if isinstance(validation, dict) else None
            recorded = f" (parity gate: {status})" if status else ""
            return (f"{p} is not the file its {manifest} describes: {changed}; what the manifest records of "
                    f"it{recorded} does not apply to it (fer-edge bench checks this file against its model)")
    if not isinstance(validation, dict) or validation.get("status") != "failed":
        return None
    why = f" ({validation['reason']})" if validation.get("reason") else ""
    return (f"{p} failed the parity gate of the export that wrote it{why}, as its {manifest} records: its "
            "answers may differ from the model's")


# -- inputs and annotation for the CLI -----------------------------------------------------
@dataclass(frozen=True)
class InputItem:
    """One image to predict on, or an input that yields none (``error``)."""

    source: str
    path: Path | None
    relative: Path | None = None  # where it sits under its directory argument
    error: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A file a folder scan left out, and why: ``"suffix"`` (no image suffix, see
    :data:`~fer_edge.faces.IMAGE_SUFFIXES`) or ``"hidden"`` (its name starts with a dot)."""

    path: Path
    reason: str


def _find_images(root: Path, skipped: list[Skipped] | None = None) -> tuple[list[Path], list[OSError], list[Path]]:
    """Image files under ``root`` (recursively, sorted, by suffix, no hidden files), the folders that could not be
    listed (as their errors) and the image names that are symbolic links to nothing (or to themselves), so that
    nothing is skipped silently; the other files left out are added to ``skipped``.

    Linked folders are followed, each real folder walked once (a link back to a folder above would otherwise loop),
    and under its name without symbolic links where it has one: the folders reached without following a link are
    walked first, then the linked ones not among them, in sorted order (so the name a file is listed under, and
    the path of its ``--annotate`` copy, never depends on the order the file system lists a folder in)."""
    files: list[Path] = []
    broken: list[Path] = []
    unreadable: list[OSError] = []
    left: list[Skipped] = []
    seen: set[str] = set()
    starts = [Path(root)]  # walked without following links; the linked folders met are walked after
    while starts:
        links: list[Path] = []
        for start in starts:
            real = os.path.realpath(start)
            if real in seen:
                continue
            seen.add(real)
            for dirpath, dirs, names in os.walk(start, onerror=unreadable.append):
                d = Path(dirpath)
                for name in sorted(dirs):
                    sub = d / name
                    if os.path.islink(sub):  # (os.walk lists it, but does not go in without followlinks)
                        links.append(sub)
                        dirs.remove(name)
                    elif os.path.realpath(sub) in seen:  # (a bind mount of a folder walked already)
                        dirs.remove(name)
                    else:
                        seen.add(os.path.realpath(sub))
                for n in names:
                    if n.startswith(".") or Path(n).suffix.lower() not in IMAGE_SUFFIXES:
                        left.append(Skipped(d / n, "hidden" if n.startswith(".") else "suffix"))
                        continue
                    f = d / n
                    if f.is_file():
                        files.append(f)
                    elif f.is_symlink() and not f.exists():  # is_file() is False for a dangling link too
                        broken.append(f)
        starts = sorted(links)
    if skipped is not None:
        skipped += sorted(left, key=lambda k: k.path)
    return sorted(files), unreadable, sorted(broken)


def skipped_summary(skipped: list[Skipped], most: int = 5) -> str:
    """``skipped`` in a few words: "3 without an image suffix (noext, notes.txt, x.psd), 1 hidden (.a.jpg)"."""
    parts = []
    for reason, words in (("suffix", "without an image suffix"), ("hidden", "hidden")):
        names = [str(k.path) for k in skipped if k.reason == reason]
        if names:
            more = f" and {len(names) - most} more" if len(names) > most else ""
            parts.append(f"{len(names)} {words} ({', '.join(names[:most])}{more})")
    return ", ".join(parts)


def _missing(p: Path) -> str:
    """Why the input ``p``, which does not exist, gives nothing: "-" is no stdin, a pattern was not expanded."""
    if str(p) == "-":
        return ("-: reading an image from standard input is not supported: give image files or folders (save the "
                "image to a file first)")
    if any(c in p.name for c in "*?["):
        return (f"{p}: no such file or directory (it looks like a file name pattern: the shell expands one only "
                "when files match it and it is not in quotes, and fer-edge does not expand patterns itself)")
    return f"{p}: no such file or directory"


def collect_inputs(args: Iterable[str | os.PathLike], skipped: list[Skipped] | None = None) -> list[InputItem]:
    """Expand files and directories (recursively, image suffixes only, linked folders followed) into input items.

    A missing path, a directory without images, a folder that cannot be read, or an image name in one that is a
    symbolic link to nothing becomes an item carrying an error, so the other inputs still run. The files a folder
    holds that are not scanned (no image suffix, hidden) are added to ``skipped`` (:class:`Skipped`), so a caller
    can say so: each file once, under its first name, however many folder arguments hold it.
    """
    items: list[InputItem] = []
    # a file skipped is counted once, as an input is classified once: a folder and its sub-folder both given, or a
    # folder and a link to it, list the same files (by resolved path, the key of :func:`drop_duplicates`)
    skipped_keys = {os.path.realpath(k.path) for k in skipped} if skipped is not None else set()
    for a in args:
        p = Path(a)
        if p.is_dir():
            left: list[Skipped] = []
            files, unreadable, broken = _find_images(p, left)
            if skipped is not None:
                for k in left:
                    key = os.path.realpath(k.path)
                    if key not in skipped_keys:
                        skipped_keys.add(key)
                        skipped.append(k)
            if not files and not unreadable and not broken:
                other = f"; {len(left)} other file{'s' if len(left) != 1 else ''} skipped: " \
                        f"{skipped_summary(left)}" if left else ""
                items.append(InputItem(str(p), None, error=(
                    f"{p}: directory has no images (looked for {', '.join(IMAGE_SUFFIXES)}{other})")))
            items += [InputItem(str(f), f, f.relative_to(p)) for f in files]
            for f in broken:
                items.append(InputItem(str(f), None, error=(
                    f"{f}: cannot read image: a symbolic link to {os.readlink(f)}, which does not exist (or links "
                    "back to itself)")))
            for e in unreadable:
                where = e.filename if e.filename is not None else p
                items.append(InputItem(str(where), None, error=(
                    f"{where}: cannot read this folder ({e.strerror or e}), so the images in it were skipped")))
        elif p.exists():
            items.append(InputItem(str(p), p, Path(p.name)))
        else:
            items.append(InputItem(str(p), None, error=_missing(p)))
    return items


def _input_key(item: InputItem) -> Path:
    return (item.path if item.path is not None else Path(item.source)).resolve()


def _through_link(item: InputItem) -> bool:
    """Whether ``item`` names its file through a symbolic link (the file's, or a folder's on the way)."""
    p = item.path if item.path is not None else Path(item.source)
    return os.path.realpath(p) != os.path.abspath(p)


def drop_duplicates(items: Iterable[InputItem]) -> tuple[list[InputItem], list[InputItem]]:
    """``items`` without repeats of the same file (by resolved path: a file named twice, also found in a folder
    argument, or reached through a symbolic link), order unchanged; and the repeats dropped. Each file is kept
    under its first name that is no symbolic link (``one.jpg``, not ``link.jpg`` beside it), else its first name;
    :func:`duplicate_of` says which name a dropped item's file is listed under."""
    items = list(items)
    chosen: dict[Path, int] = {}
    for i, it in enumerate(items):
        key = _input_key(it)
        if key not in chosen or (_through_link(items[chosen[key]]) and not _through_link(it)):
            chosen[key] = i
    keep = set(chosen.values())
    kept = [it for i, it in enumerate(items) if i in keep]
    dropped = [it for i, it in enumerate(items) if i not in keep]
    return kept, dropped


def duplicate_of(dropped: InputItem, kept: Iterable[InputItem]) -> InputItem | None:
    """The item of ``kept`` that names the same file as ``dropped`` (see :func:`drop_duplicates`), or None."""
    key = _input_key(dropped)
    return next((k for k in kept if _input_key(k) == key), None)


#: The EXIF "Software" (0x0131) value written into every annotated copy: how a later run recognises them.
ANNOTATED_SOFTWARE = "fer-edge predict --annotate"
_EXIF_SOFTWARE = 0x0131
#: Suffixes an annotated copy is written as (formats that can carry the EXIF marker); any other gets ``.png`` added.
ANNOTATION_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG",
                      ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


def annotated_copy_path(dest: str | os.PathLike) -> Path:
    """Where an annotated copy meant for ``dest`` is written: ``dest`` itself when its suffix is a format
    that can carry the annotation marker, else ``dest`` with ``.png`` added (``x.gif`` -> ``x.gif.png``).

    The one place that decides a copy's final name; applying it twice changes nothing.
    """
    dest = Path(dest)
    return dest if dest.suffix.lower() in ANNOTATION_FORMATS else dest.with_name(dest.name + ".png")


def is_annotated_copy(path: str | os.PathLike) -> bool:
    """True for a file :func:`write_annotated` wrote (it carries the :data:`ANNOTATED_SOFTWARE` EXIF marker);
    False for anything else, an unreadable file included. Reads the file's header only."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "TIFF":
                software = im.tag_v2.get(_EXIF_SOFTWARE)
            else:
                raw = im.info.get("exif")
                if not raw:
                    return False
                exif = Image.Exif()
                exif.load(raw)
                software = exif.get(_EXIF_SOFTWARE)
    except Exception:  # not an image, unreadable, a broken EXIF block: not ours
        return False
    return software == ANNOTATED_SOFTWARE


def split_annotated_copies(items: Iterable[InputItem], out_dir: str | os.PathLike
                           ) -> tuple[list[InputItem], list[InputItem]]:
    """``items`` without the annotated copies an earlier run wrote into ``out_dir`` (found by their marker,
    not their name or folder: a user's own photo there is kept); and those copies."""
    root = Path(out_dir).resolve()
    kept: list[InputItem] = []
    copies: list[InputItem] = []
    for it in items:
        inside = it.path is not None and root in it.path.resolve().parents
        (copies if inside and is_annotated_copy(it.path) else kept).append(it)
    return kept, copies


def annotation_dest(out_dir: str | os.PathLike, item: InputItem, taken: set[Path]) -> Path:
    """The final path of ``item``'s annotated copy in ``out_dir`` (suffix included, see
    :func:`annotated_copy_path`): its place under its folder argument, with ``.annotated``, ``.annotated2``...
    before the suffix when that path is in ``taken`` (resolved paths: the inputs, the copies already chosen) or
    holds a file that is not an earlier annotated copy. The path chosen is added to ``taken``."""
    rel = item.relative or Path(Path(item.source).name)
    base = annotated_copy_path(Path(out_dir) / rel)
    dest, n = base, 1
    while dest.resolve() in taken or (dest.exists() and not is_annotated_copy(dest)):
        n += 1
        dest = base.with_name(f"{base.stem}.annotated{'' if n == 2 else n - 1}{base.suffix}")
    taken.add(dest.resolve())
    return dest


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def annotate(image, predictions: list[Prediction], note: str | None = None):
    """An RGB copy of ``image`` with each face's box and "label score" drawn on it."""
    from PIL import ImageDraw

    img = load_image(image).convert("RGB")
    draw = ImageDraw.Draw(img)
    w, h = img.size
    line = max(1, round(min(w, h) / 150))
    font = _font(max(10, round(min(w, h) / 18)))
    colours = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa")
    for pred in predictions:
        box = pred.box or Box(0, 0, w, h)
        colour = colours[pred.index % len(colours)]
        draw.rectangle([box.x, box.y, box.x + box.w - 1, box.y + box.h - 1], outline=colour, width=line)
        text = f"{pred.label} {pred.score:.2f}"
        tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        tx = min(max(0, box.x), max(0, w - tw - 2 * line))
        ty = box.y - th - 3 * line if box.y - th - 3 * line >= 0 else min(box.y + line, max(0, h - th - 3 * line))
        draw.rectangle([tx, ty, tx + tw + 2 * line, ty + th + 3 * line], fill=colour)
        draw.text((tx + line - tb[0], ty + line - tb[1]), text, fill="white", font=font)
    if note:
        tb = draw.textbbox((0, 0), note, font=font)
        draw.rectangle([0, 0, tb[2] - tb[0] + 2 * line, tb[3] - tb[1] + 3 * line], fill="black")
        draw.text((line - tb[0], line - tb[1]), note, fill="white", font=font)
    return img


def write_annotated(image, predictions: list[Prediction], dest: str | os.PathLike,
                    note: str | None = None) -> Path:
    """Draw :func:`annotate` and save it atomically to :func:`annotated_copy_path` of ``dest`` (format from the
    suffix; JPEG q95), marked as an annotated copy (EXIF Software :data:`ANNOTATED_SOFTWARE`,
    see :func:`is_annotated_copy`). Returns the path written."""
    from PIL import Image

    from fer_edge.utils import atomic_path

    dest = annotated_copy_path(dest)
    fmt = ANNOTATION_FORMATS[dest.suffix.lower()]
    img = annotate(image, predictions, note)
    exif = Image.Exif()
    exif[_EXIF_SOFTWARE] = ANNOTATED_SOFTWARE
    with atomic_path(dest) as tmp:
        img.save(tmp, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return dest
