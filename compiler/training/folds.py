"""K-fold cross-validation: ``convspec train SPEC --folds K``.

The test split stays what the spec's split makes it, in every fold. The rest (train + val) is
cut into K stratified folds (scikit-learn's ``StratifiedKFold``, shuffled with
``data.split.seed``); fold i validates on part i and trains on the others. Each fold is a full
run under ``OUT/NAME/fold-i/``; ``OUT/NAME/cv.json`` holds every test metric's mean and standard
deviation over the folds, and the fold with the best validation score (``early_stopping.monitor``)
is exported and copied to ``OUT/NAME/model.onnx``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convspec.runtime.files import atomic_write, atomic_write_text, json_text
from convspec.specs import ConvspecError, Spec

from ..data.dataset import Dataset
from ..data.loading import load_dataset
from ..run.files import check_run_out, writing
from ..run.folder import Run, discard_new_run, new_run


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
    spec: Spec,
    k: int,
    out: str | os.PathLike = "runs",
    *,
    export: bool = True,
    log: Callable[[str], None] = print,
    **train_kwargs,
) -> Path:
    """Train ``k`` folds of ``spec`` and write ``cv.json``; returns the cross-validation folder.

    ``export``: also export the best fold and copy its ``model.onnx`` up (``--no-export``: not).
    """
    from ..export.onnx import export_onnx
    from .loop import train

    check_run_out(out, spec, allow_in_data=train_kwargs.get("allow_out_in_data", False))  # before the data loads
    data = load_dataset(spec, log=log)
    splits = fold_splits(data, k, spec.data.split.seed)
    parent = new_run(out, spec.name).path
    runs: list[Run] = []
    try:
        for i, split in enumerate(splits, 1):
            log(f"fold {i}/{k}: {len(split['train'])} train, {len(split['val'])} val, {len(split['test'])} test images")
            fold_spec = spec.model_copy(update={"name": f"fold-{i}"})
            fold_data = dataclasses.replace(data, splits=split)
            runs.append(train(fold_spec, out=parent, dataset=fold_data, export=False, log=log, **train_kwargs))
    except BaseException:
        if not runs:  # nothing trained: no folder holding only its marker is left behind
            discard_new_run(Run(parent))
        raise
    summary = cv_summary(runs)
    best = runs[summary["best_fold"] - 1]
    if export:
        export_onnx(best, log=log)
        with writing(parent / "model.onnx"):
            atomic_write(parent / "model.onnx", lambda tmp: shutil.copyfile(best.onnx, tmp))
    with writing(parent / "cv.json"):
        atomic_write_text(parent / "cv.json", json_text(summary, indent=1) + "\n")
    for name, m in summary["test"].items():
        log(f"{name:>10}: {m['mean']:.4f} +- {m['std']:.4f}")
    wrote = f"{parent / 'cv.json'}" + (f", {parent / 'model.onnx'}" if export else "")
    log(f"best fold: {summary['best_fold']} ({summary['monitor']}); {wrote}")
    return parent


def cv_summary(runs: list[Run]) -> dict:
    """Mean and (sample) standard deviation of each test metric and of the best validation value."""
    results = [r.read_results() for r in runs]
    monitor = results[0]["monitor"]
    minimize = monitor.endswith("loss")
    best_values = [_best_value(r, res) for r, res in zip(runs, results, strict=True)]
    best = (min if minimize else max)(range(len(runs)), key=lambda i: best_values[i])
    tested = [res.get("test", {}).get("metrics", {}) for res in results]
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


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}  # fmt: skip
