"""Checkpoint files: one format for ``best.pt``, ``last.pt`` and the shipped weights.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``):

=================  ==========================================================
``format``         ``"fer-edge-checkpoint/1"``
``model``          registry name; ``model_kwargs``: its constructor arguments, defaults included
``state_dict``     the model weights (the EMA weights when EMA was used)
``labels``         list of class names, in output order
``normalization``  ``{"mean": m, "std": s}`` applied to pixels scaled to 0..1
``train_config``   the full :class:`fer_edge.training.config.TrainConfig` as a dict
``metrics``        e.g. ``{"val_accuracy": ..., "val_macro_f1": ...}``
``data``           data fingerprint (source path, split, size, sha)
``epoch``          epochs completed
``fer_edge_version``
=================  ==========================================================

``last.pt`` also carries the optimizer/scheduler/RNG state under ``resume``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_edge.errors import CheckpointError
from fer_edge.preprocess import Normalization

FORMAT = "fer-edge-checkpoint/1"
_REQUIRED = ("model", "state_dict", "labels", "normalization")


@dataclass
class Checkpoint:
    path: Path | None
    model_name: str
    model_kwargs: dict
    state_dict: dict
    labels: list[str]
    normalization: Normalization
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    epoch: int = 0
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def sha256(self) -> str:
        from fer_edge.utils import sha256_path

        if self.path is None:
            raise CheckpointError("checkpoint has no file to hash")
        return sha256_path(self.path)

    def build_model(self):
        """The registered model with these weights, in eval mode, on CPU."""
        from fer_edge.models import create_model

        model = create_model(self.model_name, num_classes=len(self.labels), **self.model_kwargs)
        mismatch = state_dict_mismatch(model.state_dict(), self.state_dict)
        if mismatch:
            import json

            raise CheckpointError(
                f"{self.path or 'checkpoint'}: its weights do not fit {self.model_name} built with model_kwargs "
                f"{json.dumps(self.model_kwargs)} ({mismatch}). A checkpoint "
                "saved before fer-edge recorded the model's defaults breaks when those defaults change; "
                "retrain it or add the old defaults to its model_kwargs"
            )
        model.load_state_dict(self.state_dict)
        return model.eval()

    def resolved_model_kwargs(self) -> dict:
        """``model_kwargs`` with the constructor defaults filled in (older checkpoints stored only the passed ones)."""
        from fer_edge.models import create_model, resolved_model_kwargs

        model = create_model(self.model_name, num_classes=len(self.labels), **self.model_kwargs)
        return resolved_model_kwargs(model, self.model_kwargs)


def state_dict_mismatch(own: dict, other: dict) -> str:
    """How ``other`` fails to fit a model whose state dict is ``own``, in one phrase ("" when it fits)."""
    missing = [k for k in own if k not in other]
    unexpected = [k for k in other if k not in own]
    shapes = [k for k in own if k in other and other[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return ""
    return (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} of another shape, "
            f"e.g. {(missing + unexpected + shapes)[0]!r}")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically (temp file, then rename)."""
    import torch

    from fer_edge import __version__
    from fer_edge.utils import atomic_path

    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint payload lacks {', '.join(missing)}")
    # tensors go to the CPU: a checkpoint trained on a GPU then loads with a plain torch.load on any machine
    payload = _on_cpu({"format": FORMAT, "fer_edge_version": __version__, **payload})
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> Checkpoint:
    """Load a checkpoint with ``weights_only=True``; clear errors for missing or foreign files."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a fer-edge checkpoint (expected format {FORMAT!r}); "
            "train one with `fer-edge train` or use a shipped model"
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return Checkpoint(
        path=path,
        model_name=raw["model"],
        model_kwargs=dict(raw.get("model_kwargs") or {}),
        state_dict=raw["state_dict"],
        labels=list(raw["labels"]),
        normalization=Normalization.from_dict(raw["normalization"]),
        train_config=dict(raw.get("train_config") or {}),
        metrics=dict(raw.get("metrics") or {}),
        data=dict(raw.get("data") or {}),
        epoch=int(raw.get("epoch", 0)),
        raw=raw,
    )
