"""Run a fer-edge ``.pt`` checkpoint with PyTorch (the FP32 reference of the parity gate)."""
from __future__ import annotations

import json

import numpy as np

from fer_edge.runtimes._common import (as_input, check_artifact, check_device, device_or_default, package_available,
                                       torch_threads)
from fer_edge.runtimes.base import Runtime


class PyTorchRuntime(Runtime):
    name = "pytorch"
    package = "torch"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return package_available("torch")

    @classmethod
    def known_devices(cls) -> list[str]:
        return ["cpu", "cuda", "mps"]

    @classmethod
    def devices(cls) -> list[str]:
        import torch

        out = ["cpu"]
        if torch.cuda.is_available():
            out.append("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            out.append("mps")
        return out

    def __init__(self, path, device=None, threads=None, batch_hint=1, **options):
        super().__init__(path, device_or_default(device, "cpu", self.name), threads, batch_hint, **options)
        from fer_edge.checkpoint import load_checkpoint

        check_artifact(self.path)
        self.device = check_device(self.device, self.devices(), self.name, self.known_devices(), indexed=True)
        self.checkpoint = load_checkpoint(self.path)
        self.model = self.checkpoint.build_model().to(self.device)

    @classmethod
    def from_model(cls, model, checkpoint, device: str = "cpu") -> "PyTorchRuntime":
        """Wrap an already built model (e.g. the reference during export) without reloading the file."""
        self = cls.__new__(cls)
        Runtime.__init__(self, checkpoint.path or "<memory>", device, None, 1)
        self.checkpoint = checkpoint
        self.model = model.eval().to(device)
        return self

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(as_input(x)).to(self.device)
        with torch_threads(self.threads), torch.inference_mode():
            return self.model(t).float().cpu().numpy()

    def metadata(self) -> dict[str, str]:
        from fer_edge import __version__

        ck = self.checkpoint
        return {
            "labels": json.dumps(list(ck.labels)),
            "normalization": json.dumps(ck.normalization.to_dict()),
            "model": ck.model_name,
            "source_sha256": ck.sha256 if ck.path is not None else "",
            "fer_edge_version": str(ck.raw.get("fer_edge_version", __version__)),
            "precision": "fp32",
            "target": "checkpoint",
        }

    def describe(self) -> dict:
        import torch

        return {
            **super().describe(),
            "threads": self.threads or torch.get_num_threads(),
            "precision": "fp32",
            "versions": {"torch": torch.__version__},
        }
