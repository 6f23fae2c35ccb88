"""Classification metrics from predictions (numpy): confusion matrix, accuracy, macro-F1, per-class report."""
from __future__ import annotations

import numpy as np

from fer_edge.constants import LABELS


def check_scorable(y_true, labels) -> None:
    """Refuse to score a model whose classes (``labels``, in output order) do not cover the data's: a true class
    index the model has no output for (a model trained on other classes, say 6, against FER2013's 7)."""
    from fer_edge.errors import DataError

    y = np.asarray(y_true)
    k = len(labels)
    if y.size and (int(y.max()) >= k or int(y.min()) < 0):
        data = (f"FER2013's {len(LABELS)} classes ({', '.join(LABELS)})" if int(y.max()) < len(LABELS)
                else f"classes 0..{int(y.max())}")
        raise DataError(f"the model has {k} classes ({', '.join(map(str, labels))}) and the data has {data}: it was "
                        "trained on other classes, so it cannot be scored on this data")


def check_label_order(labels) -> None:
    """Refuse to score a model whose outputs are not FER2013's classes in FER2013's order (``labels``, in output
    order; the first 7 of a model with more): the data's class i is scored as the model's output i, so a model with
    the classes in another order (alphabetical, say) or named otherwise would get a wrong accuracy without a word."""
    from fer_edge.errors import DataError

    n = min(len(labels), len(LABELS))
    if [str(x) for x in labels[:n]] != list(LABELS[:n]):
        raise DataError(f"the model's classes ({', '.join(map(str, labels))}) are not FER2013's in FER2013's order "
                        f"({', '.join(LABELS)}): its output i would be scored as the data's class i, a wrong "
                        "accuracy; reorder its output layer and labels to FER2013's order "
                        "(fer_edge.constants.LABELS)")


def to_model_order(y_true, labels) -> np.ndarray:
    """FER2013 class indices ``y_true`` as the output indices of a model whose ``labels`` (in output order) are
    FER2013's classes in another order, so output i is scored as the class it names; unchanged when the model has
    FER2013's order or classes named otherwise (:func:`check_label_order` refuses those where accuracy is
    reported)."""
    y = np.asarray(y_true)
    names = [str(x) for x in labels[:len(LABELS)]]
    if names == list(LABELS) or sorted(names) != sorted(LABELS):
        return y
    return np.array([names.index(name) for name in LABELS], dtype=np.int64)[y]


def confusion_matrix(y_true, y_pred, num_classes: int = len(LABELS)) -> np.ndarray:
    """Rows are true classes, columns predicted classes (true classes or predictions outside 0..num_classes-1 are
    refused)."""
    check_scorable(y_true, [str(i) for i in range(num_classes)])
    return _confusion(y_true, y_pred, num_classes)


def _confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """:func:`confusion_matrix` of true labels already checked; the predictions are checked here: one past the last
    class was counted into the next row's first cell (``[0, 1], [7, 1]`` scored angry-as-disgust), a negative one
    into the row before, without a word."""
    from fer_edge.errors import DataError

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_pred.shape != y_true.shape:
        raise DataError(f"{y_pred.size} predictions for {y_true.size} true labels: give one prediction per label")
    if y_pred.size and (int(y_pred.min()) < 0 or int(y_pred.max()) >= num_classes):
        bad = sorted({int(v) for v in y_pred[(y_pred < 0) | (y_pred >= num_classes)]})
        many = len(bad) > 1
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise DataError(f"prediction{'s' if many else ''} {shown} {'are' if many else 'is'} outside the "
                        f"{num_classes} classes (0..{num_classes - 1})")
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
    check_scorable(y_true, labels)  # names the model's classes in the error
    check_label_order(labels)
    cm = _confusion(y_true, y_pred, len(labels))
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
