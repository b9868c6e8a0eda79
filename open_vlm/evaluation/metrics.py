"""Classification metrics as pure functions of labels and predictions (numpy in, plain dicts out).

Conventions (scikit-learn's with `zero_division=0`): precision = tp / (tp + fp), recall = tp / (tp + fn),
f1 = 2 tp / (2 tp + fp + fn), each 0 when its denominator is 0; macro = unweighted mean over every class
named (zero-support classes included), weighted = mean weighted by support, micro = from the summed counts.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: rows are the true class, columns the predicted one."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} differ in shape")
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes})")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def scores_from_counts(tp, fp, fn) -> dict[str, np.ndarray]:
    """Precision, recall and F1 from true-positive, false-positive and false-negative counts."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def _report(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, support: np.ndarray, names: list[str]) -> dict:
    per = scores_from_counts(tp, fp, fn)
    micro = scores_from_counts(tp.sum(), fp.sum(), fn.sum())
    total = support.sum()
    return {
        "per_class": [
            {
                "class": name,
                "precision": float(per["precision"][i]),
                "recall": float(per["recall"][i]),
                "f1": float(per["f1"][i]),
                "support": int(support[i]),
                "tp": int(tp[i]),
                "fp": int(fp[i]),
                "fn": int(fn[i]),
            }
            for i, name in enumerate(names)
        ],
        "macro": {k: float(v.mean()) if len(v) else 0.0 for k, v in per.items()},
        "weighted": {k: float((v * support).sum() / total) if total else 0.0 for k, v in per.items()},
        "micro": {k: float(v) for k, v in micro.items()},
    }


def single_label_report(y_true, y_pred, names: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro/weighted/micro averages, confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, len(names))
    tp = np.diag(cm)
    out = _report(tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp, cm.sum(axis=1), names)
    n = int(cm.sum())
    return {
        "multi_label": False,
        "num_samples": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        **out,
        "confusion_matrix": cm.tolist(),
    }


def multi_label_report(y_true, y_pred, names: list[str]) -> dict:
    """Per-class precision/recall/F1/support of (N, C) 0/1 label and prediction matrices, macro/weighted/micro
    averages, subset accuracy (every class right) and per-class 2 x 2 confusion matrices [[tn, fp], [fn, tp]]."""
    t, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    if t.shape != p.shape or t.ndim != 2 or t.shape[1] != len(names):
        raise ValueError(f"expected (N, {len(names)}) labels and predictions, got {t.shape} and {p.shape}")
    tp, fp, fn = (t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0)
    tn = (~t & ~p).sum(0)
    out = _report(tp, fp, fn, t.sum(0), names)
    n = len(t)
    return {
        "multi_label": True,
        "num_samples": n,
        "accuracy": float((t == p).all(axis=1).mean()) if n else 0.0,
        **out,
        "confusion_matrix": [[[int(tn[i]), int(fp[i])], [int(fn[i]), int(tp[i])]] for i in range(len(names))],
    }
