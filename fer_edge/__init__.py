"""fer-edge: facial-expression recognition from training to the edge.

Train compact 48x48 grayscale CNNs on FER2013, export them (quantized) to ONNX,
OpenVINO IR, Core ML and TorchScript, and benchmark latency and parity.
"""
from __future__ import annotations

__version__ = "0.1.0"

from fer_edge.constants import IMAGE_SIZE, LABELS, NUM_CLASSES  # noqa: E402
from fer_edge.errors import FerEdgeError  # noqa: E402


def load(path, runtime=None, device=None):
    """Return a :class:`fer_edge.predict.Predictor` for a checkpoint or exported artifact."""
    from fer_edge.predict import load as _load

    return _load(path, runtime=runtime, device=device)


__all__ = ["__version__", "IMAGE_SIZE", "LABELS", "NUM_CLASSES", "FerEdgeError", "load"]
