"""The operating threshold of a binary model, chosen on the validation split (``export.threshold``).

Torch-free; scikit-learn is imported inside the functions. A binary model labels an image
positive (the second class) when its probability is ``>= threshold``. Rules:

- a number ``t`` (default 0.5): that threshold.
- ``{metric: f1}``: the threshold of the highest validation F1 of the positive class.
- ``{metric: youden}``: the threshold of the highest Youden's J = sensitivity + specificity - 1.
- ``{recall: R}``: the HIGHEST threshold whose validation recall (sensitivity) is >= R: the
  fewest false alarms that still find R of the positives. Always reachable (the lowest
  positive's probability finds them all).
- ``{precision: P}``: the LOWEST threshold whose validation precision is >= P: the most
  positives found at that precision. When no threshold reaches P, the threshold of the
  highest validation precision is used (the lowest such) and a :class:`ThresholdWarning` says so.

Ties (the same F1 or J at several thresholds) go to the highest threshold. Each rule picks a
validation image's own probability; the value stored lies between it and the next lower validation
probability (or 0), in the middle third of that gap: the same labels on the validation split, with
room for the few 1e-8 by which the exported model's probabilities differ from PyTorch's, which would
otherwise flip the image that set it. Of that middle third it is the decimal with the fewest digits
(0.55, not 0.5472342073917389): easy to read and to write elsewhere, and the same value whether
training chose it or an export of the run did, whose probabilities differ by those 1e-8.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from convspec.specs import ConvspecError

from .metrics import binary_rates, compute, positive_probability


class ThresholdError(ConvspecError):
    """No threshold can be chosen: a rule that needs both classes in the validation split, or a bad rule."""


class ThresholdWarning(UserWarning):
    """The asked precision is not reached on the validation split; the best one is used instead."""


def _rule(rule: Any) -> tuple[str, float | str]:
    """``(kind, value)`` of a rule: a number, a dict, or the spec's Pydantic model."""
    if hasattr(rule, "model_dump"):
        rule = rule.model_dump()
    if rule is None:
        return "fixed", 0.5
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        if not 0.0 <= float(rule) <= 1.0:
            raise ThresholdError(f"export.threshold: must be in [0, 1] (got {rule})")
        return "fixed", float(rule)
    if isinstance(rule, dict) and len(rule) == 1:
        ((kind, value),) = rule.items()
        if kind == "metric" and value in ("f1", "youden"):
            return kind, value
        if kind in ("recall", "precision") and isinstance(value, (int, float)) and 0 < value <= 1:
            return kind, float(value)
    raise ThresholdError(
        "export.threshold: expected a number, {metric: f1 | youden}, {recall: R} or {precision: P} "
        f"(got {rule!r})"
    )


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, rule: Any = 0.5) -> float:
    """The binary operating threshold by ``rule`` (see the module docstring), chosen on validation data.

    Args:
        y_val: validation labels, 0 or 1 (1: the positive, second class).
        p_val: the positive class's validation probabilities, ``(N,)``, ``(N, 1)`` or ``(N, 2)``.
        rule: ``0.5`` (or any number in [0, 1]), ``{"metric": "f1" | "youden"}``,
            ``{"recall": R}``, ``{"precision": P}``, or the spec's ``export.threshold``.

    Returns:
        The threshold (a probability in [0, 1]).

    Raises:
        ThresholdError: a malformed rule, or a chosen rule on a validation split without
            both classes.
    """
    kind, value = _rule(rule)
    if kind == "fixed":
        return float(value)
    check_choosable(rule, y_val)
    y = np.asarray(y_val, dtype=np.int64)
    p = positive_probability(p_val).astype(np.float64)
    t = _below(_chosen(kind, value, y, p), p)
    missed = target_missed(rule, y, p, t)
    if missed:
        warnings.warn(missed, ThresholdWarning, stacklevel=2)
    return t


def target_missed(rule: Any, y_val: np.ndarray, p_val: np.ndarray, threshold: float) -> str | None:
    """What a ``{precision: P}`` rule did not reach at the chosen ``threshold`` on validation, or None.

    Why said apart from the value: a precision target that the validation split cannot reach is
    not an error (the best precision is used), but the report must not read as if it were met.
    """
    kind, value = _rule(rule)
    if kind != "precision" or len(np.asarray(y_val)) == 0:
        return None
    got = describe_threshold(np.asarray(y_val), p_val, threshold)["precision"]
    if got >= float(value) - 1e-12:
        return None
    return (
        f"export.threshold {{precision: {float(value):g}}}: no threshold reaches that precision on the validation "
        f"split; threshold {threshold:.6g} has the best, {got:.4f}"
    )


def check_choosable(rule: Any, y_val: np.ndarray) -> None:
    """Raise ThresholdError when ``rule`` cannot be chosen on validation labels ``y_val`` (it needs
    both classes); a fixed number always can. Training calls it before the first epoch."""
    kind, value = _rule(rule)
    y = np.asarray(y_val, dtype=np.int64)
    if kind != "fixed" and (len(y) == 0 or not (y == 1).any() or not (y == 0).any()):
        raise ThresholdError(
            f"export.threshold {_show(kind, value)}: the validation split needs images of both classes "
            f"(it has {int((y == 0).sum())} negative, {int((y == 1).sum())} positive)"
        )


def _chosen(kind: str, value: float | str, y: np.ndarray, p: np.ndarray) -> float:
    """The validation probability that ``rule`` picks (see the module docstring)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    if kind == "recall":
        _fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
        # Why the first: thresholds fall and recall rises along the curve; the first index reaching R
        # is the highest threshold that does (index 0 is sklearn's +inf, recall 0, never chosen for R > 0)
        return _prob(thresholds[int(np.argmax(tpr >= value - 1e-12))])
    if kind == "metric" and value == "youden":
        fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
        j = tpr[1:] - fpr[1:]
        return _prob(thresholds[1:][int(np.argmax(j))])  # argmax: the first (highest threshold) of ties
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    if kind == "metric":  # f1
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        best = np.flatnonzero(f1 == f1.max())
        return _prob(thresholds[best[-1]])  # thresholds rise: the last of ties is the highest
    ok = np.flatnonzero(precision >= value - 1e-12)
    if len(ok):
        return _prob(thresholds[ok[0]])  # thresholds rise: the first is the lowest
    best = np.flatnonzero(precision == precision.max())[0]
    return _prob(thresholds[best])


def describe_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """What a threshold gives on labelled data: threshold, precision, recall, f1, sensitivity, specificity."""
    m = compute(["precision", "recall", "f1"], y, np.asarray(p), "binary", threshold=threshold)
    return {**binary_rates(y, np.asarray(p), threshold), **m}


def _below(t: float, p: np.ndarray) -> float:
    """The stored threshold for the chosen probability ``t``: the shortest decimal in the middle
    third of the gap down to the next lower validation probability (or to 0); see the module docstring."""
    lower = p[p < t]
    gap_low = float(lower.max()) if len(lower) else 0.0
    third = (t - gap_low) / 3
    return _shortest_decimal(gap_low + third, t - third)


def _shortest_decimal(low: float, high: float) -> float:
    """The number in ``[low, high]`` with the fewest decimal digits (its midpoint past 15)."""
    for digits in range(1, 16):
        scale = 10**digits
        candidate = round(math.ceil(low * scale) / scale, digits)
        if low <= candidate <= high:
            return candidate
    return (low + high) / 2


def _prob(t: float) -> float:
    t = float(t)
    return 1.0 if math.isinf(t) else min(max(t, 0.0), 1.0)


def _show(kind: str, value: float | str) -> str:
    return f"{{{kind}: {value}}}"


def threshold_record(
    rule: Any,
    y_val: np.ndarray,
    p_val: np.ndarray,
    y_test: np.ndarray | None = None,
    p_test: np.ndarray | None = None,
) -> dict[str, Any]:
    """``results.json``'s ``threshold`` entry: the chosen value, its rule, and what it gives.

    Returns:
        ``{"value": t, "rule": rule, "validation": {...}, "test": {...}}``, each split's entry
        from :func:`describe_threshold` (sensitivity, specificity, precision, recall, f1);
        ``test`` only when test data is given; ``missed``: a sentence when a precision target is
        not reached on validation (:func:`target_missed`). Export writes ``value`` into the ONNX metadata.
    """
    if hasattr(rule, "model_dump"):
        rule = rule.model_dump()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)  # recorded as "missed" instead
        t = choose_threshold(y_val, p_val, rule)
    out: dict[str, Any] = {"value": t, "rule": rule}
    if len(np.asarray(y_val)):
        out["validation"] = describe_threshold(y_val, p_val, t)
        missed = target_missed(rule, y_val, positive_probability(p_val), t)
        if missed:
            out["missed"] = missed
    if y_test is not None and p_test is not None and len(np.asarray(y_test)):
        out["test"] = describe_threshold(y_test, p_test, t)
    return out


def threshold_from_results(results: dict) -> float | None:
    """The threshold a run chose (``results.json``'s ``threshold.value``, or a bare number); None if none."""
    entry = results.get("threshold") if isinstance(results, dict) else None
    value = entry.get("value") if isinstance(entry, dict) else entry
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
