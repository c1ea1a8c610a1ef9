"""``convspec.runtime.metrics``: each definition against scikit-learn or a hand count, torch-free."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from convspec.runtime import metrics
from convspec.runtime.evaluate import scores


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_binary_scores_are_those_of_the_positive_class():
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 300), 0, 1)[:, None]  # (N, 1) probability of class 1
    pred = (p[:, 0] >= 0.5).astype(int)
    m = metrics.compute(["accuracy", "precision", "recall", "f1", "auc"], y, p, "binary")
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["f1"] != pytest.approx(f1_score(y, pred, average="macro"))  # the two F1s the issue saw differ here
    assert m["auc"] == pytest.approx(roc_auc_score(y, p[:, 0]))
    # (N, 2) class probabilities give the same numbers as (N, 1)
    assert metrics.compute(list(m), y, np.hstack([1 - p, p]), "binary") == pytest.approx(m)


def test_binary_threshold_moves_labels_not_auc():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.1], [0.4], [0.35], [0.8]])
    at_half = metrics.compute(["recall", "auc"], y, p, "binary")
    at_03 = metrics.compute(["recall", "auc"], y, p, "binary", threshold=0.3)
    assert at_half["recall"] == 0.5 and at_03["recall"] == 1.0
    assert at_half["auc"] == at_03["auc"] == 0.75
    assert metrics.predictions(p, "binary", threshold=0.3).tolist() == [0, 1, 1, 1]
    assert metrics.binary_rates(y, p, 0.3) == {"threshold": 0.3, "sensitivity": 1.0, "specificity": 0.5}


def test_multiclass_macro_counts_every_declared_class():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(2)
    y = rng.choice([0, 1, 3], 200)  # class 2 of 4 is absent from the split
    probs = _softmax(rng.normal(size=(200, 4)) + 2.0 * np.eye(4)[y])
    pred = probs.argmax(1)
    m = metrics.compute(["precision", "recall", "f1"], y, probs, "multiclass")
    kw = {"labels": [0, 1, 2, 3], "average": "macro", "zero_division": 0}
    assert m["precision"] == pytest.approx(precision_score(y, pred, **kw))
    assert m["recall"] == pytest.approx(recall_score(y, pred, **kw))
    assert m["f1"] == pytest.approx(f1_score(y, pred, **kw))
    assert m["recall"] == pytest.approx(recall_score(y, pred, labels=[0, 1, 3], average="macro") * 3 / 4)


def test_multiclass_auc_is_one_vs_rest_macro_over_present_classes():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 150)
    probs = _softmax(rng.normal(size=(150, 3)) + np.eye(3)[y])
    assert metrics.auc(y, probs, "multiclass") == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    # class 3 of 4 absent: the mean of the present classes' one-vs-rest AUCs
    probs4 = _softmax(np.hstack([np.log(probs), rng.normal(size=(150, 1))]))
    per = [roc_auc_score(y == j, probs4[:, j]) for j in range(3)]
    assert metrics.auc(y, probs4, "multiclass") == pytest.approx(np.mean(per))
    assert math.isnan(metrics.class_auc(y, probs4, "multiclass")[3])
    assert math.isnan(metrics.auc(np.zeros(5, int), probs4[:5], "multiclass"))  # one class: undefined


def test_ece_by_hand():
    # two bins used: conf 0.95 (bin 14, 2 images, 1 right) and 0.6 (bin 8, 2 images, both right)
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.4, 0.6], [0.6, 0.4]])
    y = np.array([0, 1, 1, 0])
    expected = 0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.6)
    assert metrics.expected_calibration_error(y, probs, "multiclass") == pytest.approx(expected)
    # binary (N, 1): confidence max(p, 1 - p)
    assert metrics.expected_calibration_error(y, probs[:, 1:], "binary") == pytest.approx(expected)
    r = metrics.reliability(y, probs, "multiclass")
    assert r["count"][14] == 2 and r["count"][8] == 2 and sum(r["count"]) == 4
    # a perfectly calibrated, confident model
    assert metrics.expected_calibration_error(np.array([0, 1]), np.eye(2), "multiclass") == 0.0


def test_per_class_and_confusion_match_sklearn():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 120)
    probs = _softmax(rng.normal(size=(120, 4)))
    d = metrics.per_class(list("wxyz"), y, probs, "multiclass")
    p, r, f, s = precision_recall_fscore_support(y, probs.argmax(1), labels=range(4), zero_division=0)
    assert d["confusion"] == confusion_matrix(y, probs.argmax(1), labels=range(4)).tolist()
    for i, c in enumerate(d["classes"].values()):
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))


def test_evaluate_scores_use_the_same_definitions():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 80)
    p = rng.uniform(size=(80, 1))
    r = scores(y, None, ["neg", "pos"], np.hstack([1 - p, p]), task="binary", threshold=0.4)
    m = metrics.compute(["accuracy", "precision", "recall", "f1", "auc", "ece"], y, p, "binary", threshold=0.4)
    assert r.metrics == pytest.approx(m)
    assert r.threshold == 0.4 and r.to_dict()["f1"] == pytest.approx(m["f1"])


def test_metrics_module_imports_no_sklearn_or_torch():
    code = "import sys; import convspec.runtime.metrics; print('sklearn' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
