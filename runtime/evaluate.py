"""Score an exported model on labelled images: accuracy, per-class precision/recall/F1, confusion.

Torch-free. The data is an ImageFolder tree (one sub-folder per class) or a CSV
(``path,label``); its class names are matched to the model's by name, so the data may hold
a subset of the model's classes in any order, but never a class the model does not know.
Metrics are computed with numpy (a confusion matrix is all they need).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convspec.specs.readfile import FileReadError, check_regular

from .datasets import DataError, list_csv, list_folder
from .images import load_images
from .predictor import Predictor

CHUNK = 1024  # images decoded at a time: bounds memory on large folders


@dataclass
class EvalResult:
    """Scores of a model on labelled images.

    Attributes:
        classes: the model's class names (rows and columns of ``confusion``).
        confusion: ``(K, K)`` int64, rows true class, columns predicted class.
        accuracy: fraction of images predicted right.
        per_class: ``{name: {"precision", "recall", "f1", "support"}}`` for every model class.
        precision, recall, f1: macro averages over the classes present in the data.
        images: number of images scored.
        failures: ``(path, reason)`` of images that could not be read (skipped).
        y_true, y_pred: class indices per scored image (into ``classes``).
        probabilities: ``(N, K)`` class probabilities per scored image.
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "classes": self.classes,
            "per_class": self.per_class,
            "confusion": self.confusion.tolist(),
            "failures": [list(f) for f in self.failures],
        }


def scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    probabilities: np.ndarray | None = None,
    failures: list | None = None,
) -> EvalResult:
    """:class:`EvalResult` from true and predicted class indices (into ``classes``)."""
    k = len(classes)
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }

    def macro(v: np.ndarray) -> float:
        return float(v[present].mean()) if present.any() else 0.0

    n = len(y_true)
    return EvalResult(
        classes=list(classes),
        confusion=cm,
        accuracy=float(tp.sum() / n) if n else 0.0,
        per_class=per_class,
        precision=macro(precision),
        recall=macro(recall),
        f1=macro(f1),
        images=n,
        failures=list(failures or []),
        y_true=y_true,
        y_pred=y_pred,
        probabilities=probabilities if probabilities is not None else np.zeros((0, k)),
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
    predictor = model if isinstance(model, Predictor) else Predictor(model)
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
    info = predictor.info
    failures: list[tuple[str, str]] = []
    probs, kept_labels = [], []
    for start in range(0, len(paths), CHUNK):
        images, kept, bad = load_images(
            paths[start : start + CHUNK], info.channels, info.size, info.resize, on_error="skip"
        )
        failures.extend(bad)
        for i in range(0, len(images), batch_size):
            probs.append(predictor.class_probabilities(predictor.predict_arrays(images[i : i + batch_size])))
        kept_labels.append(labels[start : start + CHUNK][kept])
        if progress is not None:
            progress(min(CHUNK, len(paths) - start))
    if not sum(len(p) for p in probs):
        raise DataError(
            f"no readable images among {len(paths)} files"
            + (f" (first failure: {failures[0][0]}: {failures[0][1]})" if failures else "")
        )
    p = np.concatenate(probs)
    y = np.concatenate(kept_labels)
    return scores(y, predictor.decide(p), predictor.classes, p, failures)


def evaluate_arrays(
    predictor: Predictor, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 64
) -> EvalResult:
    """Score ``predictor`` on ready uint8 ``(N, C, H, W)`` images with class indices ``labels``."""
    probs = [
        predictor.class_probabilities(predictor.predict_arrays(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    p = np.concatenate(probs) if probs else np.zeros((0, len(predictor.classes)))
    return scores(np.asarray(labels), predictor.decide(p), predictor.classes, p)


def _samples(data: Any, log: Callable[[str], None] | None = None) -> tuple[list[str], list[str]]:
    """``(paths, class names)`` of a folder, a CSV or ``(path, label)`` pairs."""
    if isinstance(data, (str, os.PathLike)):
        root = os.fspath(data)
        # Why min_classes=1: scoring on some of the model's classes is fine (match_classes checks
        # that each is one the model knows); "a classifier needs 2 classes" is a training rule.
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
        raise DataError(f"{where}: classes the model does not know: {shown} (the model's classes: {known})")
    return index
