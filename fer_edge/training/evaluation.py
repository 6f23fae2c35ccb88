"""``fer-edge eval``: accuracy, macro-F1, per-class report and confusion matrix of a checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class EvalResult:
    checkpoint: str
    model: str
    split: str
    data: str
    tta: bool
    accuracy: float
    macro_f1: float
    n: int
    per_class: dict
    confusion: list
    confusion_png: str | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def evaluate(checkpoint: str | Path | None, data: str | Path, split: str | None = None, tta: bool = False,
             device: str = "auto", out_dir: str | Path | None = None, limit: int | None = None,
             progress: bool = True) -> EvalResult:
    """Evaluate a checkpoint (a path or shipped name; None: the shipped default) on a labelled split."""
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.data import default_val_split, load_split
    from fer_edge.metrics import classification_metrics
    from fer_edge.training.plots import plot_confusion
    from fer_edge.training.trainer import predict_logits, resolve_device
    from fer_edge.weights import resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    ck = load_checkpoint(path)
    split = split or default_val_split(data)
    ds = load_split(data, split, progress=progress)
    images, labels = ds.images, ds.labels
    if limit:
        images, labels = images[:limit], labels[:limit]
    dev = resolve_device(device)
    model = ck.build_model().to(dev)
    logits = predict_logits(model, images, ck.normalization, dev, tta=tta)
    m = classification_metrics(labels.numpy(), logits.argmax(1).numpy(), ck.labels)
    png = None
    if out_dir is not None:
        out = Path(out_dir)
        png = str(plot_confusion(np.asarray(m["confusion"]), ck.labels, out / f"confusion_{ds.split}.png",
                                 title=f"{ck.model_name} on {ds.split}{' (flip TTA)' if tta else ''}: "
                                       f"accuracy {m['accuracy']:.4f}"))
    return EvalResult(str(path), ck.model_name, ds.split, str(data), tta, m["accuracy"], m["macro_f1"], m["n"],
                      m["per_class"], m["confusion"], png)
