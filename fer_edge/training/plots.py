"""Training plots: learning curves and confusion matrices.

Drawn with :mod:`fer_edge.plotting` (a Figure on its own Agg canvas, no pyplot), so drawing one leaves the caller's
matplotlib backend alone; written atomically. ``*_figure`` builds the figure, ``plot_*`` writes it as PNG.
A plot that cannot be drawn raises (:class:`~fer_edge.errors.PlotError` when matplotlib cannot be imported); the
callers turn that into a warning (:func:`fer_edge.plotting.draw_or_warn`) after keeping the metrics.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_edge.plotting import colormap, save_png, subplots, wrap_title

# Characters per title line: a title longer than its figure was cut at the edges (an ensemble of five models with
# flip TTA lost its accuracy), so titles are wrapped to about the figure's width at their font size.
CURVES_TITLE_WIDTH = 110
CONFUSION_TITLE_WIDTH = 62
# "n/a": a class the split has no image of has no share of its true class to show (0/0), not a share of 0.00
NO_IMAGES = "n/a"
CONFUSION_CAPTION = "each cell: share of its true class (row-normalised) and the image count"
COLORBAR_LABEL = "share of the true class (row-normalised)"


def _epoch_axis(ax, epochs: list[int]) -> None:
    """Whole epochs on the x axis, at the run's epochs while they are few: one epoch is tick 1, not 0.945..1.050."""
    from matplotlib.ticker import MaxNLocator

    lo, hi = min(epochs), max(epochs)
    pad = max(0.5, 0.02 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    if len(set(epochs)) <= 12:
        ax.set_xticks(sorted(set(epochs)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.2, 1.4 ticks


def curves_figure(history: list[dict], title: str = ""):
    """The Figure of :func:`plot_curves`. Each epoch's point has a marker while they are few enough to tell apart:
    a one-epoch run's single points draw no line."""
    ep = [r["epoch"] for r in history]
    fig, axes = subplots(1, 3, figsize=(13, 3.6))
    style = {"marker": "o", "markersize": 3} if len(ep) <= 60 else {}
    axes[0].plot(ep, [r["train_loss"] for r in history], label="train", **style)
    val = [(r["epoch"], r) for r in history if r.get("val_loss") is not None]
    if val:
        axes[0].plot([e for e, _ in val], [r["val_loss"] for _, r in val], label="val", **style)
        axes[1].plot([e for e, _ in val], [r["val_accuracy"] for _, r in val], label="val", **style)
        axes[1].plot([e for e, _ in val], [r["val_macro_f1"] for _, r in val], label="val macro-F1", ls="--",
                     **style)
    axes[1].plot(ep, [r["train_accuracy"] for r in history], label="train", **style)
    axes[2].plot(ep, [r["lr"] for r in history], **style)
    for ax, name in zip(axes, ("loss", "accuracy", "learning rate (end of epoch)")):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        if ep:
            _epoch_axis(ax, ep)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    if title:
        fig.suptitle(wrap_title(title, CURVES_TITLE_WIDTH))
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss, accuracy and learning rate per epoch."""
    return save_png(curves_figure(history, title), path, dpi=110)


def confusion_figure(cm: np.ndarray, labels: list[str], title: str = ""):
    """The Figure of :func:`plot_confusion`: each cell shows the share of its true class (row) and the count; a
    class with no images (an empty row) shows ``n/a`` on a grey row."""
    cm = np.asarray(cm)
    if cm.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix {cm.shape} for {len(labels)} labels")
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    empty = np.broadcast_to(rows == 0, cm.shape)
    fig, ax = subplots(figsize=(6.4, 5.6))
    im = ax.imshow(np.ma.masked_array(norm, mask=empty), cmap=colormap("Blues").with_extremes(bad="0.92"),
                   vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = NO_IMAGES if empty[i, j] else f"{norm[i, j]:.2f}\n{cm[i, j]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046).set_label(COLORBAR_LABEL, fontsize=8)
    ax.set_title("\n".join(filter(None, (wrap_title(title, CONFUSION_TITLE_WIDTH) if title else "",
                                         CONFUSION_CAPTION))), fontsize=9)
    fig.tight_layout()
    return fig


def plot_confusion(cm: np.ndarray, labels: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts."""
    return save_png(confusion_figure(cm, labels, title), path, dpi=110)
