"""Run a traced TorchScript ``.ts`` artifact (metadata in the extra file ``fer_edge.json``)."""
from __future__ import annotations

import json
import warnings

import numpy as np

from fer_edge.runtimes._common import (as_input, check_artifact, check_device, device_or_default, package_available,
                                       torch_threads)
from fer_edge.runtimes.base import Runtime


class TorchScriptRuntime(Runtime):
    name = "torchscript"
    package = "torch"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return package_available("torch")

    @classmethod
    def devices(cls) -> list[str]:
        from fer_edge.runtimes.pytorch import PyTorchRuntime

        return PyTorchRuntime.devices()

    @classmethod
    def known_devices(cls) -> list[str]:
        from fer_edge.runtimes.pytorch import PyTorchRuntime

        return PyTorchRuntime.known_devices()

    def __init__(self, path, device=None, threads=None, batch_hint=1, **options):
        super().__init__(path, device_or_default(device, "cpu", self.name), threads, batch_hint, **options)
        import torch

        from fer_edge.errors import ArtifactError
        from fer_edge.exporters.metadata import TS_EXTRA_FILE

        check_artifact(self.path)
        self.device = check_device(self.device, self.devices(), self.name, self.known_devices(), indexed=True)
        extra = {TS_EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings():  # torch.jit.load is deprecated (still works)
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra).eval()
        except Exception as e:  # torch raises RuntimeError/ValueError for foreign files
            raise ArtifactError(f"{self.path}: not a loadable TorchScript file ({type(e).__name__}: {e})") from None
        raw = extra[TS_EXTRA_FILE]
        try:
            self._meta = json.loads(raw) if raw else {}
        except ValueError:
            self._meta = {}

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(as_input(x)).to(self.device)
        with torch_threads(self.threads), torch.inference_mode():
            return self.module(t).float().cpu().numpy()

    def metadata(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._meta.items()}

    def describe(self) -> dict:
        import torch

        return {
            **super().describe(),
            "threads": self.threads or torch.get_num_threads(),
            "precision": self._meta.get("precision"),
            "versions": {"torch": torch.__version__},
        }
