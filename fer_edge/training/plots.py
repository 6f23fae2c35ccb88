"""Training plots: learning curves and confusion matrices (matplotlib, Agg backend, atomic writes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss, accuracy and learning rate per epoch."""
    from fer_edge.utils import atomic_path

    plt = _figure()
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(ep, [r["train_loss"] for r in history], label="train")
    val = [(r["epoch"], r) for r in history if r.get("val_loss") is not None]
    if val:
        axes[0].plot([e for e, _ in val], [r["val_loss"] for _, r in val], label="val")
        axes[1].plot([e for e, _ in val], [r["val_accuracy"] for _, r in val], label="val")
        axes[1].plot([e for e, _ in val], [r["val_macro_f1"] for _, r in val], label="val macro-F1", ls="--")
    axes[1].plot(ep, [r["train_accuracy"] for r in history], label="train")
    axes[2].plot(ep, [r["lr"] for r in history])
    from matplotlib.ticker import MaxNLocator

    for ax, name in zip(axes, ("loss", "accuracy", "learning rate (end of epoch)")):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.2, 1.4 ticks
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def plot_confusion(cm: np.ndarray, labels: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts."""
    from fer_edge.utils import atomic_path

    plt = _figure()
    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{cm[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
