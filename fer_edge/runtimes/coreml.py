"""Run a Core ML ``.mlpackage`` (macOS only) through its raw-logits variant.

Every Core ML export writes two packages: ``<stem>_<precision>.mlpackage`` (grayscale
image input + classifier, for apps) and ``<stem>_<precision>_logits.mlpackage``
(float32 tensor in, ``logits`` out). This runtime runs the logits variant: given the
classifier package it uses the sibling ``_logits`` package.

Off macOS, ``available()`` is ``(False, "needs macOS")``; the runtime can still be built
to read ``metadata()`` (the model is not loaded), but ``run()`` raises.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fer_edge.runtimes._common import as_input, check_artifact, device_or_default, package_available
from fer_edge.runtimes.base import Runtime

COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
#: The name suffix of the raw-logits companion package (``x_fp32_logits.mlpackage``).
LOGITS_SUFFIX = "_logits"


def logits_variant(path: str | Path) -> Path:
    """The raw-logits package that belongs to a Core ML artifact (itself when it already is one)."""
    p = Path(str(path).rstrip("/"))
    if p.stem.endswith(LOGITS_SUFFIX):
        return p
    return p.with_name(p.stem + LOGITS_SUFFIX + p.suffix)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The user-defined metadata of a ``.mlpackage`` (works on every OS; the model is not compiled)."""
    from fer_edge.runtimes._common import quiet_coremltools

    quiet_coremltools()
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    return dict(spec.description.metadata.userDefined)


class CoreMLRuntime(Runtime):
    """``device``: a compute unit (``CPU_ONLY``, ``CPU_AND_GPU``, ``CPU_AND_NE``, ``ALL``; default ``ALL``)."""

    name = "coreml"
    package = "coremltools"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if sys.platform != "darwin":
            return False, "needs macOS"
        return package_available("coremltools")

    @classmethod
    def devices(cls) -> list[str]:
        return list(COMPUTE_UNITS) if sys.platform == "darwin" else []

    @classmethod
    def known_devices(cls) -> list[str]:
        return list(COMPUTE_UNITS)

    def __init__(self, path, device=None, threads=None, batch_hint=1, **options):
        super().__init__(path, device_or_default(device, "ALL", self.name), threads, batch_hint, **options)
        from fer_edge.errors import UnknownDeviceError
        from fer_edge.runtimes._common import require_package

        require_package("coremltools", "coreml runtime")
        check_artifact(self.path, is_dir=True)
        unit = next((u for u in COMPUTE_UNITS if self.device.lower() == u.lower()), None)  # any case, as elsewhere
        if unit is None:
            raise UnknownDeviceError(f"coreml: unknown compute unit {self.device!r}; valid: {', '.join(COMPUTE_UNITS)}")
        self.device = unit
        self.logits_path = logits_variant(self.path)
        self._meta = read_metadata(self.path)
        self.model = None
        if sys.platform == "darwin":
            import coremltools as ct

            check_artifact(self.logits_path, is_dir=True)
            self.model = ct.models.MLModel(
                str(self.logits_path), compute_units=getattr(ct.ComputeUnit, self.device)
            )
            spec = self.model.get_spec()
            self._input = spec.description.input[0].name
            self._output = spec.description.output[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        from fer_edge.errors import RuntimeUnavailableError

        if self.model is None:
            raise RuntimeUnavailableError("coreml: running a Core ML model needs macOS")
        arr = as_input(x)
        batch = [{self._input: arr[i : i + 1]} for i in range(arr.shape[0])]
        outs = self.model.predict(batch)
        if isinstance(outs, dict):
            outs = [outs]
        return np.concatenate([np.asarray(o[self._output], dtype=np.float32).reshape(1, -1) for o in outs])

    def metadata(self) -> dict[str, str]:
        from fer_edge.exporters.metadata import pick_metadata

        return pick_metadata(self._meta)

    def describe(self) -> dict:
        import coremltools as ct

        return {
            **super().describe(),
            "compute_units": self.device,
            "model_file": str(self.logits_path),
            "precision": self._meta.get("precision"),
            "versions": {"coremltools": ct.__version__},
        }
