"""K-fold cross-validation: ``convspec train SPEC --folds K``.

The test split stays what the spec's split makes it, in every fold. The rest (train + val) is
cut into K stratified folds (scikit-learn's ``StratifiedKFold``, shuffled with
``data.split.seed``); fold i validates on part i and trains on the others. Each fold is a full
run under ``OUT/NAME/fold-i/``; ``OUT/NAME/cv.json`` holds every test metric's mean and standard
deviation over the folds, and the fold with the best validation score (``early_stopping.monitor``)
is exported and copied to ``OUT/NAME/model.onnx``.

``--folds K --resume OUT/NAME`` continues an interrupted cross-validation: finished folds are kept,
the interrupted one resumes from its ``last.pt``, the rest train. The spec is the first fold's (as
``--resume`` reads a run); every fold's ``split.json`` must be fold i of K over the same data.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convspec.runtime.compare import cv_folds
from convspec.runtime.files import atomic_write, atomic_write_text, json_text
from convspec.specs import ConvspecError, Spec, load_spec
from convspec.specs.loader import revalidate

from ..data.dataset import Dataset
from ..data.loading import load_dataset
from ..data.split import apply_split_file
from ..run.checkpoint import CheckpointError
from ..run.files import check_run_out, writing
from ..run.folder import Run, discard_new_run, new_run
from .errors import TrainingInterrupted
from .resume import open_checkpoint, resume_spec


def fold_splits(data: Dataset, k: int, seed: int) -> list[dict[str, np.ndarray]]:
    """K splits of ``data``: the same test indices, train/val rotated over stratified folds."""
    from sklearn.model_selection import StratifiedKFold

    pool = np.sort(np.concatenate([data.splits["train"], data.splits["val"]]))
    y = data.labels[pool]
    smallest = int(np.bincount(y, minlength=len(data.class_names)).min()) if len(y) else 0
    if k < 2 or k > len(pool) or smallest < k:
        raise ConvspecError(
            f"--folds {k}: needs 2 <= K and at least K images of every class outside the test split "
            f"(the smallest class has {smallest})"
        )
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(pool, y)
    return [{"train": np.sort(pool[tr]), "val": np.sort(pool[va]), "test": data.splits["test"]} for tr, va in folds]


def train_folds(
    spec: Spec | str | os.PathLike | None,
    k: int,
    out: str | os.PathLike = "runs",
    *,
    export: bool = True,
    resume: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    log: Callable[[str], None] = print,
    **train_kwargs,
) -> Path:
    """Train ``k`` folds of ``spec`` and write ``cv.json``; returns the cross-validation folder.

    ``export``: also export the best fold and copy its ``model.onnx`` up (``--no-export``: not).
    ``resume``: continue the cross-validation folder it names; ``spec`` (optional) and ``overrides``
    may then change only what ``--resume`` lets a run change (epochs, device).
    """
    from ..export.onnx import export_onnx
    from .loop import train

    if resume is None:
        spec = revalidate(spec, overrides) if isinstance(spec, Spec) else load_spec(spec, overrides=overrides)
        check_run_out(out, spec, allow_in_data=train_kwargs.get("allow_out_in_data", False))  # before the data loads
        data = load_dataset(spec, log=log)
        splits = fold_splits(data, k, spec.data.split.seed)
        made = new_run(out, spec.name)
        parent = made.path
        pool = len(splits[0]["train"]) + len(splits[0]["val"])
        log(f"folds: {k} over the {pool} train and val images; the {len(splits[0]['test'])} test images stay fixed")
    else:
        made = Run(Path(resume))
        parent = made.path
        spec, data, splits = _resumed(parent, k, spec, overrides, log)
    again = f"convspec train --folds {k} --resume {parent}" + ("" if export else " --no-export")
    runs: list[Run] = []
    try:
        for i, split in enumerate(splits, 1):
            fold_spec = spec.model_copy(update={"name": f"fold-{i}"})
            fold_data = dataclasses.replace(data, splits=split)
            folder = Run(parent / fold_spec.name)
            if resume is not None and _finished(folder, fold_spec):
                log(f"fold {i}/{k}: finished before ({folder})")
                runs.append(folder)
                continue
            log(f"fold {i}/{k}: {len(split['train'])} train, {len(split['val'])} val, {len(split['test'])} test images")
            where = {"resume": folder.path} if resume is not None and folder.path.exists() else {"out": parent}
            runs.append(train(fold_spec, dataset=fold_data, export=False, log=log, **where, **train_kwargs))
    except (KeyboardInterrupt, TrainingInterrupted):
        if not cv_folds(parent):  # nothing trained: no folder holding only its marker is left behind
            discard_new_run(made)
            raise
        raise TrainingInterrupted(
            f"interrupted in fold {len(runs) + 1} of {k}; the finished folds and its last.pt are kept. "
            f"Continue the cross-validation with: {again}"
        ) from None
    except BaseException:
        if not cv_folds(parent):
            discard_new_run(made)
        raise
    summary = cv_summary(runs)
    best = runs[summary["best_fold"] - 1]
    try:
        if export:
            export_onnx(best, log=log)
            with writing(parent / "model.onnx"):
                atomic_write(parent / "model.onnx", lambda tmp: shutil.copyfile(best.onnx, tmp))
        elif (parent / "model.onnx").is_file():  # an earlier run's best fold, whose weights may have changed
            (parent / "model.onnx").unlink()
            log(f"removed the stale {parent / 'model.onnx'} (--no-export: export the best fold with convspec export)")
        with writing(parent / "cv.json"):
            atomic_write_text(parent / "cv.json", json_text(summary, indent=1) + "\n")
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted after the last fold, while exporting; every fold is kept. Finish with: {again}"
        ) from None
    for name, m in summary["test"].items():
        if m["mean"] is None:
            log(f"{name:>10}: - (in no fold)")
            continue
        partial = f" (over {m['counted']} of {len(m['values'])} folds)" if m["counted"] < len(m["values"]) else ""
        log(f"{name:>10}: {m['mean']:.4f} +- {m['std']:.4f}{partial}")
    wrote = f"{parent / 'cv.json'}" + (f", {parent / 'model.onnx'}" if export else "")
    log(f"best fold: {summary['best_fold']} ({summary['monitor']}); {wrote}")
    return parent


def _resumed(
    parent: Path, k: int, given: Spec | str | os.PathLike | None, overrides: list[str] | None, log
) -> tuple[Spec, Dataset, list[dict[str, np.ndarray]]]:
    """The spec, data and K splits that continue the cross-validation folder ``parent``.

    Checked before any epoch: ``parent`` holds fold runs; none is numbered above K; each fold's
    ``split.json`` is fold i of K over the data as it is now (the same test split in each).
    """
    folds = cv_folds(parent)
    if not folds:
        what = "not found" if not parent.exists() else "not a cross-validation folder (no fold-N/ run folders)"
        raise CheckpointError(f"{parent}: {what}; --folds K --resume takes a folder written by convspec train --folds")
    beyond = [f.name for f in folds if int(f.name[5:]) > k]
    if beyond:
        raise CheckpointError(
            f"{parent}: has {', '.join(beyond)}, more than --folds {k}; resume with the K it was started with"
        )
    first, ckpt = open_checkpoint(folds[0])
    if given is not None:  # the fold's name is the only other difference a given spec has
        given = given if isinstance(given, Spec) else load_spec(given, overrides=overrides)
        given, overrides = given.model_copy(update={"name": folds[0].name}), None
    spec = resume_spec(first, ckpt, given, overrides)
    data = load_dataset(spec, split_file=first.split, log=log)
    splits = fold_splits(data, k, spec.data.split.seed)
    for fold in folds:
        i = int(fold.name[5:])
        saved = apply_split_file(fold / "split.json", data, lambda _m: None)
        if any(not np.array_equal(saved[s], splits[i - 1][s]) for s in ("train", "val", "test")):
            raise CheckpointError(
                f"{fold / 'split.json'}: is not fold {i} of --folds {k} over this data; resume with the K the "
                "cross-validation was started with, on the same data"
            )
    return spec, data, splits


def _finished(run: Run, spec: Spec) -> bool:
    """A fold whose run completed (its report written) with the epochs ``spec`` asks for."""
    if not run.report.is_file():
        return False
    try:
        return run.read_results().get("epochs") == spec.training.epochs
    except ConvspecError:  # an unreadable results.json: the fold is finished again
        return False


def cv_summary(runs: list[Run]) -> dict:
    """Mean and (sample) standard deviation of each test metric and of the best validation value."""
    results = [r.read_results() for r in runs]
    monitor = results[0]["monitor"]
    minimize = monitor.endswith("loss")
    best_values = [_best_value(r, res) for r, res in zip(runs, results, strict=True)]
    best = (min if minimize else max)(range(len(runs)), key=lambda i: best_values[i])
    tested = [((res.get("test") or {}).get("metrics") or {}) for res in results]
    names = [n for n in tested[0] if all(n in t for t in tested)]
    return {
        "folds": len(runs),
        "runs": [r.path.name for r in runs],
        "monitor": monitor,
        "best_fold": best + 1,
        "best_values": best_values,
        "test": {n: _mean_std([t[n] for t in tested]) for n in names},
    }


def _best_value(run: Run, results: dict) -> float:
    history = run.history()
    epoch = results["best_epoch"]
    record = next((h for h in history if h["epoch"] == epoch), history[-1])
    return record.get(results["monitor"], record["train_loss"])


def _mean_std(values: list[float | None]) -> dict:
    """Mean and sample std over the folds where the metric exists: a test split of one class has no
    AUC (None), which ended the cross-validation in a traceback; ``counted`` says over how many."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": statistics.fmean(finite) if finite else None,
        "std": statistics.stdev(finite) if len(finite) > 1 else (0.0 if finite else None),
        "values": values,
        "counted": len(finite),
    }
