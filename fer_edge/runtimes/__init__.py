"""Runtimes: run an exported artifact (or a checkpoint) on N x 1 x 48 x 48 float32 input.

``RUNTIMES`` maps a runtime name to its :class:`~fer_edge.runtimes.base.Runtime` class;
:func:`runtime_for_path` picks one from a file's suffix using the targets table
(``.pt`` checkpoints run in ``pytorch``), and :func:`load_runtime` builds a ready one::

    from fer_edge.runtimes import load_runtime
    rt = load_runtime("out/fer_nano_int8.onnx", threads=1)
    logits = rt.run(x)              # float32 N x 7
    rt.metadata()["labels"]         # JSON list of class names

Importing this package is cheap: each runtime imports its engine inside its methods.
"""
from __future__ import annotations

import os
from pathlib import Path

from fer_edge.errors import ArtifactError, FerEdgeError, OptionError, RuntimeUnavailableError
from fer_edge.runtimes.base import Runtime
from fer_edge.runtimes.coreml import CoreMLRuntime
from fer_edge.runtimes.onnxruntime import OnnxRuntime
from fer_edge.runtimes.openvino import OpenVINORuntime
from fer_edge.runtimes.pytorch import PyTorchRuntime
from fer_edge.runtimes.torchscript import TorchScriptRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    cls.name: cls
    for cls in (PyTorchRuntime, TorchScriptRuntime, OnnxRuntime, OpenVINORuntime, CoreMLRuntime)
}

#: Suffixes of fer-edge checkpoints (not an export target: they run in ``pytorch``).
CHECKPOINT_SUFFIXES = (".pt", ".pth")
CHECKPOINT_SUFFIX = CHECKPOINT_SUFFIXES[0]


def get_runtime(name: str) -> type[Runtime]:
    """The runtime class called ``name``; unknown names are rejected with the valid ones."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise FerEdgeError(f"unknown runtime {name!r}; valid runtimes: {', '.join(RUNTIMES)}") from None


def _check_path(path) -> None:
    if not isinstance(path, (str, os.PathLike)):  # (pathlib raised a plain TypeError)
        raise ArtifactError(f"expected the path of a model file (or a shipped model name), got "
                            f"{type(path).__name__} {path!r}")


def runtime_for_path(path: str | Path) -> type[Runtime]:
    """The runtime that runs ``path``: ``pytorch`` for ``.pt``, else the target's runtime from the table."""
    from fer_edge.targets import target_for_path

    _check_path(path)
    if str(path).rstrip("/").lower().endswith(CHECKPOINT_SUFFIXES):  # in any case, as the targets' suffixes
        return get_runtime(PyTorchRuntime.name)
    try:
        return get_runtime(target_for_path(path).runtime)
    except FerEdgeError as e:
        raise FerEdgeError(f"{e}, or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})") from None


def load_runtime(path: str | Path, runtime: str | None = None, device: str | None = None,
                 threads: int | None = None, batch_hint: int = 1, *, runtime_option: str = "the runtime= argument",
                 **options) -> Runtime:
    """Construct the runtime for ``path`` (or the one named), after checking it is available here.

    ``path`` may also be a shipped model name (``small``, ``nano``): its checkpoint runs in PyTorch, also when a
    file of that name is in the current folder (``./nano`` names that file), as everywhere in fer-edge
    (:func:`fer_edge.weights.resolve_checkpoint`). ``device`` is matched in any case (``cpu`` is OpenVINO's ``CPU``).
    ``runtime_option`` is how an error names the ``runtime`` choice (the CLI passes ``"--runtime"``).
    """
    from fer_edge.weights import PRETRAINED, resolve_checkpoint

    _check_path(path)
    if device is not None and not isinstance(device, str):  # each runtime would fail on it with its own exception
        raise OptionError(f"the device must be a string such as 'cpu' (or None: the runtime's default), got "
                          f"{type(device).__name__} {device!r}")
    if str(path) in PRETRAINED:
        path = resolve_checkpoint(str(path))
    cls = get_runtime(runtime) if runtime else runtime_for_path(path)
    if runtime:
        try:
            runs_it = runtime_for_path(path)
        except FerEdgeError:  # a suffix fer-edge does not know: the named runtime decides
            runs_it = cls
        if runs_it is not cls:
            raise ArtifactError(f"runtime {cls.name} does not run {Path(path).name}: fer-edge runs that file type "
                                f"in {runs_it.name} (leave out {runtime_option} to have it chosen from the file)")
    ok, why = cls.available()
    if not ok:
        raise RuntimeUnavailableError(f"runtime {cls.name} is not available here: {why}")
    return cls(path, device=device, threads=threads, batch_hint=batch_hint, **options)


def available_runtimes() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every registered runtime."""
    return {name: cls.available() for name, cls in RUNTIMES.items()}


__all__ = [
    "Runtime",
    "RUNTIMES",
    "CHECKPOINT_SUFFIX",
    "CHECKPOINT_SUFFIXES",
    "get_runtime",
    "runtime_for_path",
    "load_runtime",
    "available_runtimes",
]
