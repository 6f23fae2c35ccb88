"""Classification metrics from predictions (numpy): confusion matrix, accuracy, macro-F1, per-class report."""
from __future__ import annotations

import numpy as np

from fer_edge.constants import LABELS


def confusion_matrix(y_true, y_pred, num_classes: int = len(LABELS)) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_report(cm: np.ndarray, labels=LABELS) -> dict[str, dict[str, float]]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        str(lab): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for lab, p, r, f, s in zip(labels, precision, recall, f1, support)
    }


def classification_metrics(y_true, y_pred, labels=LABELS) -> dict:
    """accuracy, macro_f1 (over classes present in y_true or y_pred), n, per_class, confusion."""
    y_true = np.asarray(y_true)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    report = per_class_report(cm, labels)
    present = (cm.sum(0) + cm.sum(1)) > 0
    f1s = np.array([report[str(lab)]["f1"] for lab in labels])
    n = int(len(y_true))
    return {
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "macro_f1": float(f1s[present].mean()) if present.any() else 0.0,
        "n": n,
        "per_class": report,
        "confusion": cm.tolist(),
    }
