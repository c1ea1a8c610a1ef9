"""Score an exported model on labelled images: accuracy, per-class precision/recall/F1, confusion.

Torch-free. The data is an ImageFolder tree (one sub-folder per class) or a CSV
(``path,label``); its class names are matched to the model's by name, so the data may hold
a subset of the model's classes in any order, but never a class the model does not know.
Metrics come from :mod:`convspec.runtime.metrics`, the definitions training uses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convspec.specs.classes import is_run_folder, other_unicode_form
from convspec.specs.readfile import FileReadError, check_regular

from . import metrics
from .datasets import DataError, list_csv, list_folder
from .predictor import Predictor


@dataclass
class EvalResult:
    """Scores of a model on labelled images (definitions: :mod:`convspec.runtime.metrics`).

    Attributes:
        classes: the model's class names (rows and columns of ``confusion``).
        confusion: ``(K, K)`` int64, rows true class, columns predicted class.
        accuracy: fraction of images predicted right.
        per_class: ``{name: {"precision", "recall", "f1", "support", "auc"}}`` for every model class.
        precision, recall, f1: binary: of the positive (second) class; multiclass: macro averages
            over every class of the model (absent ones count, with 0).
        images: number of images scored.
        failures: ``(path, reason)`` of images that could not be read (skipped).
        y_true, y_pred: class indices per scored image (into ``classes``).
        probabilities: ``(N, K)`` class probabilities per scored image.
        task: ``binary`` or ``multiclass``.
        auc: binary ROC AUC, or one-vs-rest macro over the classes present (NaN without probabilities).
        ece: expected calibration error, 15 bins (NaN without probabilities).
        threshold: the binary operating threshold the labels were decided with (None: multiclass).
    """

    classes: list[str]
    confusion: np.ndarray
    accuracy: float
    per_class: dict[str, dict[str, float]]
    precision: float
    recall: float
    f1: float
    images: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    y_true: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    y_pred: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    task: str = "multiclass"
    auc: float = math.nan
    ece: float = math.nan
    threshold: float | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """accuracy, precision, recall, f1, auc, ece: the keys of results.json's test metrics."""
        return {
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "auc": self.auc,
            "ece": self.ece,
        }

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if isinstance(v, float) and math.isnan(v) else v  # Why: JSON has no NaN

        out: dict[str, Any] = {"images": self.images, "task": self.task}
        out.update({k: num(v) for k, v in self.metrics.items()})
        if self.threshold is not None:
            out["threshold"] = self.threshold
        out.update(
            {
                "classes": self.classes,
                "per_class": {n: {k: num(v) for k, v in c.items()} for n, c in self.per_class.items()},
                "confusion": self.confusion.tolist(),
                "failures": [list(f) for f in self.failures],
            }
        )
        return out


def scores(
    y_true: np.ndarray,
    y_pred: np.ndarray | None,
    classes: Sequence[str],
    probabilities: np.ndarray | None = None,
    failures: list | None = None,
    *,
    task: str = "multiclass",
    threshold: float | None = None,
) -> EvalResult:
    """:class:`EvalResult` from true class indices (into ``classes``) and predictions.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices; None: decided from ``probabilities`` (binary:
            ``p >= threshold``, default 0.5; multiclass: argmax).
        classes: the model's class names.
        probabilities: ``(N, K)`` class probabilities (binary: ``(N, 2)`` or ``(N, 1)``); AUC and
            ECE need them.
        failures: unreadable images, passed through.
        task: ``binary`` (precision/recall/F1 of the second class) or ``multiclass`` (macro).
        threshold: binary operating threshold, recorded in the result.
    """
    k = len(classes)
    y_true = np.asarray(y_true, np.int64)
    has_probs = probabilities is not None and len(probabilities) == len(y_true) and len(y_true) > 0
    if y_pred is None:
        if probabilities is None:
            raise ValueError("scores needs y_pred or probabilities")
        y_pred = metrics.predictions(probabilities, task, threshold)
    y_pred = np.asarray(y_pred, np.int64)
    n = len(y_true)
    zero = dict.fromkeys(("accuracy", "precision", "recall", "f1"), 0.0)
    label = metrics.label_metrics(y_true, y_pred, task, k) if n else zero
    detail = metrics.per_class(classes, y_true, probabilities if has_probs else None, task, pred=y_pred)
    per_class = detail["classes"]
    if not has_probs:
        for c in per_class.values():
            c.pop("auc", None)
    probs = (
        metrics.class_probabilities(probabilities, task) if probabilities is not None and len(probabilities) else None
    )
    return EvalResult(
        classes=list(classes),
        confusion=np.asarray(detail["confusion"], np.int64).reshape(k, k),
        accuracy=label["accuracy"],
        per_class=per_class,
        precision=label["precision"],
        recall=label["recall"],
        f1=label["f1"],
        images=n,
        failures=list(failures or []),
        y_true=y_true,
        y_pred=y_pred,
        probabilities=probs if probs is not None else np.zeros((0, k)),
        task=task,
        auc=metrics.auc(y_true, probabilities, task) if has_probs else math.nan,
        ece=metrics.expected_calibration_error(y_true, probabilities, task) if has_probs else math.nan,
        threshold=(0.5 if threshold is None else float(threshold)) if task == "binary" else None,
    )


def evaluate(
    model: Predictor | str | os.PathLike,
    data: str | os.PathLike | Sequence[tuple[str, str]],
    batch_size: int = 64,
    *,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score a model on labelled images.

    Args:
        model: a :class:`Predictor`, or the path of an ``.onnx`` file.
        data: an ImageFolder root (``DATA/<class>/<image>``), a CSV with columns
            ``path,label`` (paths relative to the CSV's folder), or ``(path, label)`` pairs.
        batch_size: images per ORT run.
        progress: called with the number of images finished since the last call.
        log: receives warnings (``warning: ...``: folders convspec wrote, skipped); None
            uses :func:`warnings.warn`.

    Returns:
        The :class:`EvalResult`; unreadable images are left out and listed in ``failures``.

    Raises:
        DataError: missing or malformed data, a class the model does not know, or no
            readable image at all.
        ModelError: an unusable model file.
    """
    predictor = model if isinstance(model, Predictor) else Predictor(model, intra_op_threads=1)  # a run per core
    paths, names = _samples(data, log)
    index = match_classes(sorted(set(names)), predictor.classes, data)
    labels = np.array([index[n] for n in names], np.int64)
    return evaluate_files(predictor, paths, labels, batch_size=batch_size, progress=progress)


def evaluate_files(
    predictor: Predictor,
    paths: Sequence[str],
    labels: np.ndarray,
    *,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Score ``predictor`` on image files whose true class indices (into its classes) are ``labels``."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    labels = _class_indices(labels, len(paths), predictor.classes)
    failures: list[tuple[str, str]] = []
    probs, kept_labels = [], []
    for chunk in predictor.scored_chunks(paths, batch_size):
        failures.extend(chunk.failures)
        probs.append(chunk.probabilities)
        kept_labels.append(labels[chunk.kept])
        if progress is not None:
            progress(len(chunk.kept) + len(chunk.failures))
    if not sum(len(p) for p in probs):
        raise DataError(
            f"no readable images among {len(paths)} files"
            + (f" (first failure: {failures[0][0]}: {failures[0][1]})" if failures else "")
        )
    p = np.concatenate(probs)
    y = np.concatenate(kept_labels)
    return scores(
        y, predictor.decide(p), predictor.classes, p, failures, task=predictor.task, threshold=predictor.threshold
    )


def evaluate_arrays(
    predictor: Predictor, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 64
) -> EvalResult:
    """Score ``predictor`` on ready uint8 ``(N, C, H, W)`` images with class indices ``labels``.

    ``images``: an array, or anything with ``len`` whose slices are arrays (read a batch at a time).
    """
    labels = _class_indices(labels, len(images), predictor.classes)
    if not len(labels):
        raise DataError("no images to evaluate (images and labels are empty)")
    probs = [
        predictor.class_probabilities(predictor.predict_arrays(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    p = np.concatenate(probs) if probs else np.zeros((0, len(predictor.classes)))
    return scores(
        labels,
        predictor.decide(p),
        predictor.classes,
        p,
        task=predictor.task,
        threshold=predictor.threshold,
    )


def _class_indices(labels: Any, n: int, classes: Sequence[str]) -> np.ndarray:
    """``labels`` as int64 class indices into ``classes``, one per image; else a DataError saying
    what is wrong (a label outside 0..K-1 dropped images from the confusion matrix unseen)."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"labels: expected {n} class indices, one per image (got shape {y.shape})")
    if len(y) and not np.issubdtype(y.dtype, np.integer):  # Why not bool: True is class 1 by accident
        raise DataError(f"labels: expected integer class indices 0..{len(classes) - 1} (got {y.dtype} values)")
    bad = y[(y < 0) | (y >= len(classes))] if len(y) else y
    if len(bad):
        raise DataError(
            f"labels: {len(bad)} outside 0..{len(classes) - 1}, the model's {len(classes)} classes "
            f"(e.g. {int(bad[0])}); give indices into Predictor.classes"
        )
    return y.astype(np.int64)


def _samples(data: Any, log: Callable[[str], None] | None = None) -> tuple[list[str], list[str]]:
    """``(paths, class names)`` of a folder, a CSV or ``(path, label)`` pairs."""
    if isinstance(data, (str, os.PathLike)):
        root = os.fspath(data)
        # Why min_classes=1: scoring on some of the model's classes is fine (match_classes checks
        # that each is one the model knows); "a classifier needs 2 classes" is a training rule.
        if os.path.isdir(root) and os.path.lexists(os.path.join(root, "split.json")) and is_run_folder(root):
            # Why refused: its plots were scored as images of its sub-folders' "classes"
            raise DataError(
                f"{root}: a run folder, not labelled images; score its test split with "
                f"convspec evaluate MODEL {root}, or pass the folder or CSV of its data"
            )
        if os.path.isdir(root):
            samples, classes = list_folder(root, key=root, min_classes=1, log=log)
        elif not os.path.exists(root):
            raise DataError(f"{root}: not found (expected an ImageFolder folder or a CSV file path,label)")
        elif not os.path.isfile(root):  # a FIFO, a device: say what it is, never open it
            try:
                check_regular(root, "csv")
            except FileReadError as e:
                raise DataError(f"{e}; expected an ImageFolder folder or a CSV file path,label") from None
            samples, classes = list_csv(root, key=root, min_classes=1)  # it became a file meanwhile
        elif root.lower().endswith((".csv", ".tsv", ".txt")):
            samples, classes = list_csv(root, key=root, min_classes=1)
        else:
            raise DataError(
                f"{root}: expected an ImageFolder folder (one sub-folder per class) or a CSV file path,label"
            )
        return [p for p, _ in samples], [classes[i] for _, i in samples]
    pairs = list(data)
    if not pairs:
        raise DataError("no labelled images given")
    return [os.fspath(p) for p, _ in pairs], [str(lab) for _, lab in pairs]


def match_classes(data_classes: list[str], model_classes: list[str], data: Any) -> dict[str, int]:
    """Map the data's class names to the model's output indices; unknown names are an error.

    The data may hold any subset of the model's classes (one class too): the scores are over
    the images given, with every model class a possible prediction; per-class precision,
    recall and F1 are listed for all classes and the macro averages cover the classes present.

    Raises:
        DataError: a class the model does not know, naming it and the model's classes.
    """
    index = {c: i for i, c in enumerate(model_classes)}
    unknown = [c for c in data_classes if c not in index]
    if unknown:
        where = os.fspath(data) if isinstance(data, (str, os.PathLike)) else "the data"
        shown = ", ".join(unknown[:10]) + (f", ... and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        known = ", ".join(model_classes[:20]) + (", ..." if len(model_classes) > 20 else "")
        forms = other_unicode_form(unknown, model_classes)
        hint = (
            f"; {', '.join(forms[:10])}: the same letters as a model class in another Unicode form (NFD "
            "against NFC, as macOS writes folder names); rename the folder"
            if forms
            else ""
        )
        raise DataError(f"{where}: classes the model does not know: {shown} (the model's classes: {known}){hint}")
    return index
