"""Classification metrics, one definition for training, evaluation, tuning and export.

Torch-free: numpy, with scikit-learn imported inside the functions (``convspec evaluate``
must start fast). Inputs are true class indices ``y`` ``(N,)`` and probabilities ``probs``:
``(N, 1)`` (binary: the probability of the second class), ``(N, 2)`` (binary, both
classes) or ``(N, K)`` (multiclass softmax).

Definitions (README "Metrics"):

- accuracy: fraction of images whose predicted label is the true one.
- binary precision / recall / F1: those of the positive (second) class, with labels from
  ``p >= threshold`` (default 0.5); 0 where undefined (no predicted or no true positive).
- multiclass precision / recall / F1: the unweighted mean over EVERY declared class of the
  per-class scores (a class absent from the split counts, with recall 0 and precision 0 when
  never predicted, as scikit-learn's ``labels=range(K), zero_division=0``); labels by argmax.
- AUC: binary, the ROC AUC of the positive class's probability. Multiclass, one-vs-rest
  macro: the mean of each class's ROC AUC (its probability column, that class against all
  others) over the classes PRESENT in the split; a class absent from the split has no
  positives, so its AUC is undefined and it is left out of the mean. NaN when the split
  holds fewer than two classes.
- ECE (expected calibration error): top-label, 15 equal-width bins of confidence (the
  probability of the most probable class; binary: ``max(p, 1 - p)``) on ``[0, 1]``, bin b
  holding ``(b/15, (b+1)/15]`` (the first also 0); ``ECE = sum_b n_b / N * |acc_b - conf_b|``
  with acc_b the fraction right (argmax label) and conf_b the mean confidence in bin b.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

METRICS = ("accuracy", "precision", "recall", "f1", "auc")
ECE_BINS = 15


def class_probabilities(probs: np.ndarray, task: str) -> np.ndarray:
    """``(N, K)`` per class; a binary ``(N, 1)`` output becomes ``[1 - p, p]``."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[:, None]
    if task == "binary" and probs.shape[1] == 1:
        return np.concatenate([1.0 - probs, probs], axis=1)
    return probs


def positive_probability(probs: np.ndarray) -> np.ndarray:
    """Probability of the positive (second) class of a binary model's ``(N, 1)`` or ``(N, 2)`` output."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs if probs.ndim == 1 else probs[:, -1]


def predictions(probs: np.ndarray, task: str, threshold: float | None = 0.5) -> np.ndarray:
    """Class indices from probabilities: binary ``p >= threshold`` (default 0.5), multiclass argmax."""
    probs = np.asarray(probs)
    if task == "binary":
        t = 0.5 if threshold is None else float(threshold)
        return (positive_probability(probs) >= t).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)


def compute(
    names: Iterable[str],
    y: np.ndarray,
    probs: np.ndarray,
    task: str,
    *,
    threshold: float | None = 0.5,
    num_classes: int | None = None,
) -> dict[str, float]:
    """The named metrics (any of accuracy, precision, recall, f1, auc, ece), as defined above.

    Args:
        names: metric names, in the order wanted.
        y: true class indices ``(N,)``.
        probs: model probabilities (see the module docstring).
        task: ``binary`` or ``multiclass``.
        threshold: the binary operating threshold (labels only; AUC and ECE ignore it).
        num_classes: the declared class count (default: ``probs``' width; 2 for binary).
    """
    y = np.asarray(y, dtype=np.int64)
    names = list(names)
    unknown = [n for n in names if n not in (*METRICS, "ece")]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r} (known: {', '.join((*METRICS, 'ece'))})")
    k = _num_classes(probs, task, num_classes)
    scores = label_metrics(y, predictions(probs, task, threshold), task, k)
    out: dict[str, float] = {}
    for name in names:
        if name == "auc":
            out[name] = auc(y, probs, task)
        elif name == "ece":
            out[name] = expected_calibration_error(y, probs, task)
        else:
            out[name] = scores[name]
    return out


def label_metrics(y: np.ndarray, pred: np.ndarray, task: str, num_classes: int) -> dict[str, float]:
    """Accuracy, precision, recall and F1 from true and predicted labels (binary: positive class; else macro)."""
    from sklearn import metrics as skm

    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if task == "binary":
        kw: dict[str, Any] = {"average": "binary", "pos_label": 1, "labels": [0, 1]}
    else:
        kw = {"average": "macro", "labels": list(range(num_classes))}
    # Why one call: precision_score, recall_score and f1_score each run it (and its input checks) again
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y, pred, zero_division=0, **kw)
    return {
        "accuracy": float(skm.accuracy_score(y, pred)) if len(y) else math.nan,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def auc(y: np.ndarray, probs: np.ndarray, task: str) -> float:
    """ROC AUC: binary of the positive class; multiclass one-vs-rest macro over the classes present."""
    per = class_auc(y, probs, task)
    values = [v for v in per.values() if not math.isnan(v)]
    if task == "binary":
        return per.get(1, math.nan)
    return float(np.mean(values)) if values else math.nan


def class_auc(y: np.ndarray, probs: np.ndarray, task: str) -> dict[int, float]:
    """One-vs-rest ROC AUC per class index (NaN for a class absent from ``y`` or when ``y`` has one class)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    p = class_probabilities(probs, task)
    present = set(np.unique(y).tolist())
    out: dict[int, float] = {}
    for j in range(p.shape[1]):
        if j not in present or len(present) < 2:
            out[j] = math.nan
        else:
            out[j] = float(roc_auc_score((y == j).astype(np.int64), p[:, j]))
    return out


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, task: str, bins: int = ECE_BINS) -> float:
    """Top-label ECE over ``bins`` equal-width confidence bins (see the module docstring); NaN for no images."""
    y = np.asarray(y, dtype=np.int64)
    if not len(y):
        return math.nan
    conf, right = _confidence(y, probs, task)
    which = _bin_index(conf, bins)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(right[m].mean() - conf[m].mean())
    return float(total)


def reliability(y: np.ndarray, probs: np.ndarray, task: str, bins: int = ECE_BINS) -> dict[str, list]:
    """Per bin: ``edges`` (bins + 1), ``count``, ``accuracy`` and ``confidence`` (NaN for empty bins)."""
    y = np.asarray(y, dtype=np.int64)
    conf, right = _confidence(y, probs, task)
    which = _bin_index(conf, bins)
    count, acc, mean_conf = [], [], []
    for b in range(bins):
        m = which == b
        count.append(int(m.sum()))
        acc.append(float(right[m].mean()) if m.any() else math.nan)
        mean_conf.append(float(conf[m].mean()) if m.any() else math.nan)
    return {"edges": np.linspace(0, 1, bins + 1).tolist(), "count": count, "accuracy": acc, "confidence": mean_conf}


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``(K, K)`` int64 confusion matrix, rows true class, columns predicted class."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(np.asarray(y), np.asarray(pred), labels=list(range(k))).astype(np.int64)


def per_class(
    class_names: Sequence[str],
    y: np.ndarray,
    probs: np.ndarray | None,
    task: str,
    *,
    threshold: float | None = 0.5,
    pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per-class precision / recall / F1 / support / one-vs-rest AUC, and the confusion matrix (rows: true).

    ``pred`` (labels) may stand in for ``probs``; AUC is then NaN.
    """
    from sklearn.metrics import precision_recall_fscore_support

    y = np.asarray(y, dtype=np.int64)
    if pred is None:
        pred = predictions(probs, task, threshold)
    k = len(class_names)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    aucs = class_auc(y, probs, task) if probs is not None and len(probs) else {}
    return {
        "classes": {
            name: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
                "auc": aucs.get(i, math.nan),
            }
            for i, name in enumerate(class_names)
        },
        "confusion": confusion(y, pred, k).tolist(),
    }


def binary_rates(y: np.ndarray, probs: np.ndarray, threshold: float | None = 0.5) -> dict[str, float]:
    """Sensitivity (recall of the positive class) and specificity (recall of the negative) at ``threshold``."""
    y = np.asarray(y, dtype=np.int64)
    pred = predictions(probs, "binary", threshold)
    pos, neg = y == 1, y == 0
    return {
        "threshold": 0.5 if threshold is None else float(threshold),
        "sensitivity": float((pred[pos] == 1).mean()) if pos.any() else math.nan,
        "specificity": float((pred[neg] == 0).mean()) if neg.any() else math.nan,
    }


def _num_classes(probs: np.ndarray, task: str, num_classes: int | None) -> int:
    if num_classes is not None:
        return int(num_classes)
    return 2 if task == "binary" else int(np.asarray(probs).shape[1])


def _confidence(y: np.ndarray, probs: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and whether the argmax label is right, per image."""
    p = class_probabilities(probs, task)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _bin_index(conf: np.ndarray, bins: int) -> np.ndarray:
    # Why ceil - 1: bins are (b/n, (b+1)/n], right-closed as in Guo et al. (2017); 0 joins the first
    return np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
