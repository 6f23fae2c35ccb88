"""fer-edge: facial-expression recognition from training to the edge.

Train compact 48x48 grayscale CNNs on FER2013, export them (quantized) to ONNX,
OpenVINO IR, Core ML and TorchScript, and benchmark latency and parity.
"""
from __future__ import annotations

__version__ = "0.1.0"

from fer_edge.constants import IMAGE_SIZE, LABELS, NUM_CLASSES  # noqa: E402
from fer_edge.errors import FerEdgeError  # noqa: E402


def load(path=None, runtime=None, device=None, threads=None, **options):
    """Return a :class:`fer_edge.predict.Predictor` for a checkpoint, a shipped model name or an exported
    artifact (None: the shipped default model); see :func:`fer_edge.predict.load`."""
    from fer_edge.predict import load as _load

    return _load(path, runtime=runtime, device=device, threads=threads, **options)


__all__ = ["__version__", "IMAGE_SIZE", "LABELS", "NUM_CLASSES", "FerEdgeError", "load"]
