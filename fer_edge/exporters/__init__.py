"""Exporters: a checkpoint to ONNX, OpenVINO IR, Core ML and TorchScript, quantized, validated.

:func:`export` is the library entry point (the ``fer-edge export`` command calls it);
:mod:`fer_edge.exporters.metadata` defines the metadata every artifact embeds and
:mod:`fer_edge.exporters.manifest` the ``manifest.json`` format.
"""
from __future__ import annotations

from fer_edge.exporters.api import ArtifactResult, ExportResult, ProgressEvent, export, export_artifacts
from fer_edge.exporters.base import ExportedFile, Exporter, ExportRequest
from fer_edge.exporters.manifest import MANIFEST_NAME, load_manifest, verify_manifest
from fer_edge.exporters.metadata import META_KEYS, ArtifactMeta, build_metadata
from fer_edge.exporters.registry import exporters, get_exporter

__all__ = [
    "export",
    "export_artifacts",
    "ExportResult",
    "ArtifactResult",
    "ProgressEvent",
    "Exporter",
    "ExportRequest",
    "ExportedFile",
    "exporters",
    "get_exporter",
    "MANIFEST_NAME",
    "load_manifest",
    "verify_manifest",
    "META_KEYS",
    "ArtifactMeta",
    "build_metadata",
]
