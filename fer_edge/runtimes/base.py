"""The runtime interface: load an artifact, run N x 1 x 48 x 48 float32 input, describe itself.

One module per runtime (``pytorch``, ``torchscript``, ``onnxruntime``, ``openvino``,
``coreml``), each defining a :class:`Runtime` subclass registered in
:mod:`fer_edge.runtimes`. Heavy imports happen inside methods.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class Runtime(ABC):
    #: the name used by ``--runtime`` / ``--runtimes`` and in reports
    name: str = ""
    #: the Python package it needs (named in "missing package" messages)
    package: str = ""

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, "") when usable here, else (False, reason) e.g. "needs macOS", "package onnxruntime missing"."""
        return True, ""

    @classmethod
    def devices(cls) -> list[str]:
        """Devices this runtime can use here, e.g. ["cpu"], ["CPU", "GPU"], ["CPUExecutionProvider"]."""
        return ["cpu"]

    @classmethod
    def known_devices(cls) -> list[str]:
        """Every device name this runtime takes on some machine (``cuda`` on a machine without a GPU too): what
        makes a requested device absent here rather than unknown (a typo)."""
        return ["cpu"]

    @classmethod
    def settings_now(cls, **options) -> dict:
        """The settings a session opened here with ``options`` records in :meth:`describe` that are not the
        caller's arguments but chosen by fer-edge for this machine (e.g. ONNX Runtime's session config): a
        report measured under other ones is not a measurement of what would run now."""
        return {}

    #: The keyword options this runtime understands (anything else is refused: a typo must not do nothing).
    OPTIONS: frozenset[str] = frozenset()

    def __init__(self, path: str | Path, device: str | None = None, threads: int | None = None,
                 batch_hint: int | None = 1, **options):
        import numbers

        from fer_edge.errors import FerEdgeError, OptionError

        unknown = sorted(set(options) - self.OPTIONS)
        if unknown:
            raise FerEdgeError(f"runtime {self.name} has no option {', '.join(unknown)}; its options: "
                               f"{', '.join(sorted(self.OPTIONS)) or 'none'}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise FerEdgeError(f"threads must be a whole number >= 1 (0 or None: the runtime's default), "
                               f"got {threads!r}")
        # checked here, not where a runtime reads it: OpenVINO's int() took "x" (ValueError), [1] (TypeError) and
        # 2.5 (silently 2); a whole-valued NumPy integer (a batch size from an array) is a whole number too
        if batch_hint is None:
            batch_hint = 1
        elif isinstance(batch_hint, bool) or not isinstance(batch_hint, numbers.Integral) or batch_hint < 1:
            raise OptionError(f"batch_hint must be a whole number >= 1 (the batch size to tune for; None: 1), got "
                              f"{type(batch_hint).__name__} {batch_hint!r}")
        self.path = Path(path)
        self.device = device
        self.threads = threads
        self.batch_hint = int(batch_hint)
        self.options = options

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """float32 N x 1 x 48 x 48 (already normalised) -> float32 N x num_classes logits."""

    @abstractmethod
    def metadata(self) -> dict[str, str]:
        """The embedded fer-edge metadata (labels, normalization, model, source_sha256, fer_edge_version)."""

    def describe(self) -> dict:
        """What a report records: runtime, device, threads, precision hint, versions..."""
        return {"runtime": self.name, "device": self.device, "threads": self.threads}
