"""Classification metrics against a hand-computed example and (when installed) scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from open_vlm.evaluation.metrics import confusion_matrix, multi_label_report, single_label_report

Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 1, 0, 1, 2, 2, 2, 0, 1]
NAMES = ["a", "b", "c", "d"]  # "d": no samples, never predicted


def test_hand_computed_single_label():
    r = single_label_report(Y_TRUE, Y_PRED, NAMES)
    assert r["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 1, 2, 0], [0, 0, 0, 0]]
    assert r["accuracy"] == pytest.approx(5 / 9) and r["num_samples"] == 9
    rows = {row["class"]: row for row in r["per_class"]}
    want = {  # tp, fp, fn → precision, recall, f1 = 2tp / (2tp + fp + fn), support
        "a": (2 / 3, 2 / 3, 4 / 6, 3),
        "b": (1 / 3, 1 / 2, 2 / 5, 2),
        "c": (2 / 3, 1 / 2, 4 / 7, 4),
        "d": (0.0, 0.0, 0.0, 0),
    }
    for name, (p, rec, f1, support) in want.items():
        assert (rows[name]["precision"], rows[name]["recall"], rows[name]["f1"]) == pytest.approx((p, rec, f1))
        assert rows[name]["support"] == support
    assert r["macro"]["precision"] == pytest.approx((2 / 3 + 1 / 3 + 2 / 3) / 4)
    assert r["macro"]["recall"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 4)
    assert r["macro"]["f1"] == pytest.approx((4 / 6 + 2 / 5 + 4 / 7) / 4)
    assert r["weighted"]["precision"] == pytest.approx(16 / 27)
    assert r["micro"] == pytest.approx({"precision": 5 / 9, "recall": 5 / 9, "f1": 5 / 9})


def test_hand_computed_multi_label():
    r = multi_label_report([[1, 0], [1, 1], [0, 1]], [[1, 1], [0, 1], [0, 1]], ["x", "y"])
    x, y = r["per_class"]
    assert (x["precision"], x["recall"], x["f1"], x["support"]) == pytest.approx((1.0, 0.5, 2 / 3, 2))
    assert (y["precision"], y["recall"], y["f1"], y["support"]) == pytest.approx((2 / 3, 1.0, 0.8, 2))
    assert r["micro"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75})
    assert r["accuracy"] == pytest.approx(1 / 3)
    assert r["confusion_matrix"] == [[[1, 0], [1, 1]], [[0, 1], [0, 2]]]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(ValueError):
        multi_label_report([[1, 0]], [[1, 0, 0]], ["x", "y"])


@pytest.mark.parametrize("seed", range(5))
def test_single_label_matches_sklearn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 7))
    y_true, y_pred = rng.integers(0, c, 50), rng.integers(0, c, 50)
    names = [str(i) for i in range(c + 1)]  # one extra, empty class
    r = single_label_report(y_true, y_pred, names)
    labels = list(range(c + 1))
    np.testing.assert_array_equal(r["confusion_matrix"], sk.confusion_matrix(y_true, y_pred, labels=labels))
    p, rec, f1, support = sk.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    np.testing.assert_allclose([row["precision"] for row in r["per_class"]], p)
    np.testing.assert_allclose([row["recall"] for row in r["per_class"]], rec)
    np.testing.assert_allclose([row["f1"] for row in r["per_class"]], f1)
    np.testing.assert_array_equal([row["support"] for row in r["per_class"]], support)
    for avg in ("macro", "micro", "weighted"):
        p, rec, f1, _ = sk.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        assert (r[avg]["precision"], r[avg]["recall"], r[avg]["f1"]) == pytest.approx((p, rec, f1))
    assert r["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))


@pytest.mark.parametrize("seed", range(3))
def test_multi_label_matches_sklearn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 2, (40, 4)), rng.integers(0, 2, (40, 4))
    r = multi_label_report(y_true, y_pred, list("abcd"))
    for avg in ("macro", "micro", "weighted"):
        p, rec, f1, _ = sk.precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        assert (r[avg]["precision"], r[avg]["recall"], r[avg]["f1"]) == pytest.approx((p, rec, f1))
    np.testing.assert_array_equal(r["confusion_matrix"], sk.multilabel_confusion_matrix(y_true, y_pred))
    assert r["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
