"""The fer-edge metadata every artifact embeds, under the same keys everywhere.

=====================  ====================================================
``labels``             JSON list of class names, in output order
``normalization``      JSON ``{"mean": m, "std": s}`` applied to pixels scaled to 0..1
``model``              model registry name (e.g. ``fer_nano``)
``source_sha256``      SHA-256 of the source checkpoint file
``fer_edge_version``   the fer-edge version that exported it
``precision``          ``fp32`` / ``fp16`` / ``int8``
``target``             the export target (``onnx``, ``openvino``, ``coreml``, ``torchscript``)
=====================  ====================================================

Where they live: ONNX ``metadata_props``; OpenVINO ``rt_info`` under ``fer_edge``;
Core ML ``user_defined_metadata``; TorchScript the extra file ``fer_edge.json``.
Every value is a string (JSON for the structured ones).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

from fer_edge.errors import ArtifactError
from fer_edge.preprocess import Normalization, labels_problem

META_KEYS: tuple[str, ...] = (
    "labels",
    "normalization",
    "model",
    "source_sha256",
    "fer_edge_version",
    "precision",
    "target",
)
#: The keys a valid artifact must carry (``precision``/``target`` too, but readers tolerate their absence).
REQUIRED_KEYS: tuple[str, ...] = META_KEYS[:5]
#: OpenVINO ``rt_info`` section.
OV_RT_SECTION = "fer_edge"
#: TorchScript ``_extra_files`` name.
TS_EXTRA_FILE = "fer_edge.json"


def build_metadata(ckpt, precision: str, target: str, source_sha256: str | None = None) -> dict[str, str]:
    """The metadata dict (all strings) for an artifact exported from ``ckpt``."""
    from fer_edge import __version__
    from fer_edge.targets import Precision

    return {
        "labels": json.dumps(list(ckpt.labels)),
        "normalization": json.dumps(ckpt.normalization.to_dict()),
        "model": str(ckpt.model_name),
        "source_sha256": source_sha256 if source_sha256 is not None else ckpt.sha256,
        "fer_edge_version": __version__,
        "precision": Precision(precision).value,
        "target": str(target),
    }


@dataclass(frozen=True)
class ArtifactMeta:
    """Decoded metadata: what a runtime user needs to preprocess inputs and name outputs."""

    labels: list[str]
    normalization: Normalization
    model: str
    source_sha256: str
    fer_edge_version: str
    precision: str | None = None
    target: str | None = None

    @classmethod
    def from_dict(cls, meta: Mapping[str, str], where: str = "artifact") -> "ArtifactMeta":
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ArtifactError(f"{where}: fer-edge metadata lacks {', '.join(missing)} (not exported by fer-edge?)")
        try:
            labels = json.loads(meta["labels"])
            norm = Normalization.from_dict(json.loads(meta["normalization"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{where}: unreadable fer-edge metadata ({e})") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ArtifactError(f"{where}: metadata 'labels' is not a JSON list of strings")
        if (why := labels_problem(labels)) is not None:  # a repeated name would merge two outputs' probabilities
            raise ArtifactError(f"{where}: metadata 'labels' {why}")
        return cls(
            labels=labels,
            normalization=norm,
            model=str(meta["model"]),
            source_sha256=str(meta["source_sha256"]),
            fer_edge_version=str(meta["fer_edge_version"]),
            precision=meta.get("precision"),
            target=meta.get("target"),
        )


def pick_metadata(meta: Mapping[str, object]) -> dict[str, str]:
    """Only the fer-edge keys of a larger metadata mapping, as strings."""
    return {k: str(meta[k]) for k in META_KEYS if k in meta}
