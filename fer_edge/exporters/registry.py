"""Exporter classes by target name: every target in :data:`fer_edge.targets.TARGETS` has one."""
from __future__ import annotations

from fer_edge.errors import FerEdgeError
from fer_edge.exporters.base import Exporter


def exporters() -> dict[str, type[Exporter]]:
    from fer_edge.exporters.coreml import CoreMLExporter
    from fer_edge.exporters.onnx import OnnxExporter
    from fer_edge.exporters.openvino import OpenVINOExporter
    from fer_edge.exporters.torchscript import TorchScriptExporter

    return {cls.target.name: cls for cls in (OnnxExporter, OpenVINOExporter, CoreMLExporter, TorchScriptExporter)}


def get_exporter(target: str) -> type[Exporter]:
    table = exporters()
    try:
        return table[target]
    except KeyError:
        raise FerEdgeError(f"no exporter for target {target!r}; exporters: {', '.join(table)}") from None
