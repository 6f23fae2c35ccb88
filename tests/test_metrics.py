"""fer_edge.metrics against figures worked out by hand: eval and bench print these, README quotes them."""
from __future__ import annotations

import pytest

from fer_edge.constants import LABELS
from fer_edge.errors import DataError
from fer_edge.metrics import classification_metrics, confusion_matrix


def test_confusion_rows_are_true_classes_and_columns_predictions():
    cm = confusion_matrix([0, 0, 0, 1, 2], [0, 1, 1, 1, 2])
    assert cm.shape == (7, 7) and cm.sum() == 5
    assert cm[0].tolist()[:3] == [1, 2, 0]  # three angry faces: one called angry, two disgust
    assert cm[:, 1].tolist()[:3] == [2, 1, 0]  # disgust was predicted three times
    assert cm[1].tolist()[:3] == [0, 1, 0] and cm[2].tolist()[:3] == [0, 0, 1]


def test_accuracy_per_class_report_and_macro_f1_by_hand():
    m = classification_metrics([0, 0, 0, 1, 2], [0, 1, 1, 1, 2])
    assert m["n"] == 5 and m["accuracy"] == pytest.approx(0.6)
    angry, disgust, fear = (m["per_class"][k] for k in LABELS[:3])
    # angry: 1 of 3 found (recall 1/3), every angry call right (precision 1): F1 = 2PR / (P + R) = 0.5
    assert angry == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})
    # disgust: its one face found (recall 1), 1 of 3 calls right (precision 1/3): F1 0.5
    assert disgust == pytest.approx({"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1})
    assert fear == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1})
    # macro-F1 over the classes that occur (angry, disgust, fear), not all seven
    assert m["macro_f1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m["per_class"]["happy"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion"][0][:3] == [1, 2, 0]


def test_a_class_only_predicted_counts_in_macro_f1():
    m = classification_metrics([0, 0], [0, 3])  # happy never occurs but is predicted once: its F1 of 0 counts
    assert m["per_class"]["angry"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_labels_the_model_lacks_or_orders_otherwise_are_refused():
    with pytest.raises(DataError, match="the model has 6 classes"):
        classification_metrics([0, 6], [0, 1], labels=LABELS[:6])
    with pytest.raises(DataError, match="not FER2013's in FER2013's order"):
        classification_metrics([0, 1], [0, 1], labels=sorted(LABELS))
