"""The one table of export targets, read by the CLI, the exporters, the runtime loader and the bench."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from fer_edge.errors import FerEdgeError


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


@dataclass(frozen=True)
class Target:
    """One export target.

    name: the ``--target`` value. suffix: the artifact's file suffix (a file, or a
    directory for ``.mlpackage``). precisions: those it can export. platforms: the
    ``sys.platform`` prefixes where its runtime can *run* the artifact (export works
    everywhere). runtime: the :mod:`fer_edge.runtimes` name that runs it.
    companion_suffixes: suffixes of the files written beside the artifact (OpenVINO's ``.bin``).
    """

    name: str
    suffix: str
    precisions: tuple[Precision, ...]
    platforms: tuple[str, ...]
    runtime: str
    description: str
    companion_suffixes: tuple[str, ...] = ()

    def runs_here(self) -> bool:
        import sys

        return any(sys.platform.startswith(p) for p in self.platforms)

    def filename(self, stem: str, precision: Precision | str) -> str:
        return f"{stem}_{Precision(precision).value}{self.suffix}"


_ALL = (Precision.fp32, Precision.fp16, Precision.int8)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("onnx", ".onnx", _ALL, ("linux", "darwin", "win"), "onnxruntime", "ONNX (ONNX Runtime)"),
        Target("openvino", ".xml", _ALL, ("linux", "darwin", "win"), "openvino", "OpenVINO IR (.xml + .bin)",
               (".bin",)),
        Target("coreml", ".mlpackage", _ALL, ("darwin",), "coreml", "Core ML mlprogram (.mlpackage)"),
        Target("torchscript", ".ts", (Precision.fp32,), ("linux", "darwin", "win"), "torchscript", "TorchScript (traced)"),
    )
}

#: Typer-friendly enum of target names, plus ``all``.
TargetName = Enum("TargetName", {**{k: k for k in TARGETS}, "all": "all"}, type=str)


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise FerEdgeError(f"unknown target {name!r}; valid targets: {', '.join(TARGETS)}") from None


def find_target(path) -> Target | None:
    """The target whose suffix an artifact path ends with, in any case (``NANO.ONNX``, as cameras and some
    systems name files), or None."""
    from pathlib import Path

    p = str(Path(path)).rstrip("/").lower()
    return next((t for t in TARGETS.values() if p.endswith(t.suffix)), None)


def target_for_path(path) -> Target:
    """The target whose suffix matches an artifact path."""
    t = find_target(path)
    if t is not None:
        return t
    raise FerEdgeError(
        f"cannot tell the target of {path}: expected one of the suffixes "
        + ", ".join(t.suffix for t in TARGETS.values())
    )
