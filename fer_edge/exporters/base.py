"""The exporter interface: one class per target of :data:`fer_edge.targets.TARGETS`.

An exporter turns the FP32 PyTorch model into one artifact (and any companion files)
for one precision, writing atomically (temporary name, then rename) so an interrupted
export never leaves something that looks like a valid artifact under the final name.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import shutil
import tempfile
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from fer_edge.constants import IMAGE_SIZE
from fer_edge.errors import ExportError
from fer_edge.targets import Precision, Target


@dataclass
class ExportedFile:
    """One file (or package directory) an export wrote.

    ``variant``: ``"main"`` for the artifact itself; companions name themselves (``"logits"``).
    ``inputs``/``outputs``: the I/O spec for the manifest. ``extra``: target-specific facts
    (precision hint, deployment target, quantization settings...).
    """

    path: Path
    variant: str = "main"
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    #: files that make up the artifact besides ``path`` (OpenVINO's ``.bin``)
    companions: list[Path] = field(default_factory=list)
    #: whether making it used the calibration images (INT8 only): False for an INT8 whose scales come from the
    #: weights alone (Core ML's weights-only INT8 off macOS), whose manifest entry then records no calibration
    uses_calibration: bool = True
    #: what the export did other than asked, for the run's warnings (printed, and in the manifest's ``warnings``):
    #: Core ML's INT8 falling back to weights-only when activation quantization failed
    warnings: list[str] = field(default_factory=list)


@dataclass
class ExportRequest:
    """What every exporter gets: the FP32 model in eval mode, the checkpoint, its metadata."""

    model: object  # torch.nn.Module
    ckpt: object  # fer_edge.checkpoint.Checkpoint
    metadata: dict[str, str]  # the fer-edge keys (precision/target filled in per artifact)
    calib: object | None = None  # fer_edge.exporters.calibration.ImageSet
    options: dict = field(default_factory=dict)  # e.g. calib_method


class Exporter(ABC):
    """Subclasses set ``target`` (from TARGETS) and ``packages`` and implement :meth:`export`.

    One instance serves one export run, so it may cache work shared by precisions
    (a converted FP32 graph) between calls.
    """

    target: Target
    #: Python packages the exporter needs; a missing one is named in the failure.
    packages: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._cache: dict = {}

    @classmethod
    def missing_packages(cls) -> list[str]:
        out = []
        for pkg in cls.packages:
            try:
                if importlib.util.find_spec(pkg) is None:
                    out.append(pkg)
            except (ImportError, ValueError):
                out.append(pkg)
        return out

    def check_available(self) -> None:
        missing = self.missing_packages()
        if missing:
            raise ExportError(
                f"{self.target.name} export needs the package(s) {', '.join(missing)} "
                f"(pip install {' '.join(missing)})"
            )

    def supports(self, precision: Precision | str) -> bool:
        return Precision(precision) in self.target.precisions

    @classmethod
    def output_paths(cls, out_path: Path) -> list[Path]:
        """Every path :meth:`export` writes for the artifact at ``out_path``: the artifact and its companions."""
        return [out_path, *(out_path.with_suffix(s) for s in cls.target.companion_suffixes)]

    @classmethod
    def calibrates(cls, precision: Precision | str) -> bool:
        """Whether exporting ``precision`` here uses the calibration images (INT8, unless a target's INT8 is
        weights-only here): the export warns about a small calibration set only when some artifact uses it."""
        return Precision(precision) is Precision.int8

    @abstractmethod
    def export(self, req: ExportRequest, precision: Precision, out_path: Path) -> list[ExportedFile]:
        """Write the artifact for ``precision`` at ``out_path`` (atomically); return what was written."""


# --- helpers shared by the exporters ----------------------------------------------------
def tensor_io(num_classes: int, batch: str | int = "N", input_name: str = "image",
              output_name: str = "logits") -> tuple[list[dict], list[dict]]:
    """The I/O spec of a float32 NCHW image -> logits artifact."""
    return (
        [{"name": input_name, "dtype": "float32", "shape": [batch, 1, IMAGE_SIZE, IMAGE_SIZE], "layout": "NCHW",
          "preprocessing": "(pixel / 255 - mean) / std, grayscale"}],
        [{"name": output_name, "dtype": "float32", "shape": [batch, num_classes], "meaning": "logits (no softmax)"}],
    )


def example_input(batch: int = 2):
    import torch

    return torch.zeros(batch, 1, IMAGE_SIZE, IMAGE_SIZE).normal_(generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def quiet(stderr: bool = False):
    """Silence the converters' deprecation warnings; with ``stderr`` also what they print
    (tqdm progress bars on ``sys.stderr``, calibrators' prints on ``sys.stdout``). Errors still raise."""
    import io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if stderr:
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                yield
        else:
            yield


@contextlib.contextmanager
def silent_rich():
    """Send progress bars that libraries draw on rich's global console (NNCF's) to nowhere.

    Keeps a caller's own progress display intact; restored afterwards.
    """
    import io

    import rich
    from rich.console import Console

    old = getattr(rich, "_console", None)
    rich._console = Console(file=io.StringIO(), force_terminal=False)
    try:
        yield
    finally:
        rich._console = old


@contextlib.contextmanager
def scratch_dir(near: Path):
    """A temporary directory beside ``near`` (same file system), removed afterwards."""
    near.parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f".tmp-{near.stem}-", dir=near.parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def replace_group(moves: list[tuple[Path, Path]]) -> None:
    """Rename several finished temp files (or package folders) onto their final names; the LAST pair is the
    artifact itself.

    The artifact's old file is removed first, so an interruption in between leaves at most
    companion files without an artifact, never an artifact next to stale companions. Ctrl-C and SIGTERM are held
    while the names change (a few renames). A folder at a final name is replaced only by a folder (an earlier
    ``.mlpackage``); a file never replaces a folder: ``IsADirectoryError`` before anything is renamed.
    """
    from fer_edge.utils import interrupts_deferred

    for src, dst in moves:
        if dst.is_dir() and not dst.is_symlink() and not src.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder: a file is not written over it", str(dst))
    with interrupts_deferred():
        final = moves[-1][1]
        _remove(final)
        for src, dst in moves:
            if dst != final and dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)  # a companion package folder: os.replace cannot rename onto a non-empty folder
            os.replace(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
