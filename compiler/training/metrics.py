"""Classification metrics with scikit-learn, from labels and predicted probabilities."""

from __future__ import annotations

import math

import numpy as np


class _Lazy:
    """``sklearn.metrics``, imported at the first metric computed. Why: importing ``convspec.compiler.training``
    (the loop, export, predict paths) must not pay scikit-learn's start-up."""

    def __getattr__(self, name: str):
        from sklearn import metrics

        return getattr(metrics, name)


skm = _Lazy()


def predictions(probs: np.ndarray, task: str) -> np.ndarray:
    """Class indices from probabilities: (N, 1) sigmoid for binary, (N, K) softmax otherwise."""
    if task == "binary":
        return (probs[:, 0] >= 0.5).astype(np.int64)
    return probs.argmax(axis=1)


def compute(names: list[str], y: np.ndarray, probs: np.ndarray, task: str) -> dict[str, float]:
    """The named metrics (accuracy, precision, recall, f1, auc).

    Binary: precision/recall/F1 of the second (positive) class; multiclass: macro averages.
    AUC is NaN when the split holds a single class.
    """
    pred = predictions(probs, task)
    out: dict[str, float] = {}
    avg = "binary" if task == "binary" else "macro"
    labels = None if task == "binary" else list(range(probs.shape[1]))
    for name in names:
        if name == "accuracy":
            out[name] = float(skm.accuracy_score(y, pred))
        elif name in ("precision", "recall", "f1"):
            fn = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}[name]
            out[name] = float(fn(y, pred, average=avg, labels=labels, zero_division=0))
        elif name == "auc":
            out[name] = _auc(y, probs, task)
    return out


def _auc(y: np.ndarray, probs: np.ndarray, task: str) -> float:
    if len(np.unique(y)) < 2:
        return math.nan
    if task == "binary":
        return float(skm.roc_auc_score(y, probs[:, 0]))
    present = np.unique(y)
    if len(present) < probs.shape[1]:
        return math.nan  # Why: one-vs-rest AUC is undefined for a class absent from the split
    p = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    return float(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))


def per_class(class_names: list[str], y: np.ndarray, probs: np.ndarray, task: str) -> dict:
    """Per-class precision/recall/F1/support and the confusion matrix (rows: true)."""
    pred = predictions(probs, task)
    k = len(class_names)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    return {
        "classes": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(class_names)
        },
        "confusion": skm.confusion_matrix(y, pred, labels=list(range(k))).tolist(),
    }
