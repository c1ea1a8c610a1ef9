"""Compare run folders: what differs in their specs, their test metrics, time, and validation curves.

Torch-free: reads ``spec.yaml``, ``results.json`` and ``metrics.jsonl`` of each run (never a
checkpoint). ``convspec compare RUN...`` prints :func:`compare_runs`' rows and draws
:func:`plot_compare`'s ``compare.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convspec.specs import ConvspecError
from convspec.specs.readfile import FileReadError, parse_json, read_bytes, read_text

from .files import atomic_write

METRIC_ORDER = ("accuracy", "precision", "recall", "f1", "auc", "ece")
CURVES = ("val_loss", "val_accuracy")  # what compare.png overlays (train_* when a run has no validation)
_MISSING = object()


class CompareError(ConvspecError):
    """A folder that is not a readable run folder."""


@dataclass
class RunInfo:
    """What one run folder says about itself.

    Attributes:
        name: the folder's name (made unique among compared runs by its parent).
        path: the folder.
        spec: the resolved spec, flattened to dotted keys (``training.optimizer.lr``).
        test: the test metrics of ``results.json`` ({} without a test split or before it ends).
        epochs_run: epochs finished (from ``results.json``, else ``metrics.jsonl``).
        train_s: training wall time in seconds (None before the run ends).
        images_per_s: training images per second (None before the run ends).
        history: ``metrics.jsonl``'s records, one per epoch.
    """

    name: str
    path: Path
    spec: dict[str, Any]
    test: dict[str, float] = field(default_factory=dict)
    epochs_run: int | None = None
    train_s: float | None = None
    images_per_s: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Comparison:
    """Runs side by side: ``differing`` spec keys and one row per run (see :meth:`rows`)."""

    runs: list[RunInfo]
    differing: list[str]

    @property
    def metrics(self) -> list[str]:
        """Test metric names present in any run, in the usual order."""
        found = {k for r in self.runs for k in r.test}
        return [m for m in METRIC_ORDER if m in found] + sorted(found - set(METRIC_ORDER))

    def rows(self) -> list[dict[str, Any]]:
        """One dict per run: name, path, differs, metrics, epochs, train_s, images_per_s.

        ``differs`` maps each differing dotted key that the run's spec has to its value (a key
        only other runs have is left out).
        """
        return [
            {
                "name": r.name,
                "path": str(r.path),
                "differs": {k: r.spec[k] for k in self.differing if k in r.spec},  # absent keys left out
                "metrics": {m: r.test.get(m) for m in self.metrics},
                "epochs": r.epochs_run,
                "train_s": r.train_s,
                "images_per_s": r.images_per_s,
            }
            for r in self.runs
        ]

    def to_json(self) -> str:
        return json.dumps({"differing": self.differing, "runs": self.rows()}, indent=1, default=_plain) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["name", *self.differing, *(f"test_{m}" for m in self.metrics), "epochs", "train_s", "images_per_s"])
        for row in self.rows():
            w.writerow(
                [
                    row["name"],
                    *(_cell(row["differs"].get(k)) for k in self.differing),
                    *(_cell(v) for v in row["metrics"].values()),
                    _cell(row["epochs"]),
                    _cell(row["train_s"]),
                    _cell(row["images_per_s"]),
                ]
            )
        return buf.getvalue()


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as ``{dotted.key: leaf}`` (list items by index, as ``--set`` paths)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict) and data:
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, list) and data:
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = data
    return out


def cv_folds(folder: str | os.PathLike) -> list[Path]:
    """The ``fold-N`` run folders of a ``convspec train --folds`` folder, in order (one interrupted
    before ``cv.json`` too: its folds are runs of their own); ``[]`` for any other folder."""
    folder = Path(folder)
    try:
        folds = [p for p in folder.glob("fold-*") if p.name[5:].isdigit() and (p / "spec.yaml").exists()]
    except OSError:
        return []
    return sorted(folds, key=lambda p: int(p.name[5:]))


def not_a_fold_hint(folder: str | os.PathLike) -> str:
    """For a command that takes one run: what to give instead of a cross-validation folder ("" otherwise)."""
    folds = cv_folds(folder)
    if not folds:
        return ""
    return f"; it is a cross-validation folder (convspec train --folds): give one of its folds, e.g. {folds[0]}"


def read_run(path: str | os.PathLike) -> RunInfo:
    """Read one run folder.

    Raises:
        CompareError: not a folder, not a run folder (no spec.yaml), or an unreadable
            spec.yaml, results.json or metrics.jsonl (one line naming the file).
    """
    run = Path(path)
    if not run.exists():
        raise CompareError(f"{run}: not found (expected a run folder written by convspec train)")
    if not run.is_dir():
        raise CompareError(f"{run}: not a folder (expected a run folder written by convspec train)")
    spec_file = run / "spec.yaml"
    if not os.path.lexists(spec_file):  # a FIFO or a broken link in its place: _read_spec names it
        raise CompareError(f"{run}: not a run folder (no spec.yaml; expected a folder written by convspec train)")
    spec = _read_spec(spec_file)
    results = _read_results(run / "results.json") if os.path.lexists(run / "results.json") else {}
    history = _read_history(run / "metrics.jsonl")
    timings = results.get("timings") if isinstance(results.get("timings"), dict) else {}
    test = results.get("test", {}).get("metrics", {}) if isinstance(results.get("test"), dict) else {}
    epochs = results.get("epochs_run", history[-1].get("epoch") if history else None)
    return RunInfo(
        name=run.name,
        path=run,
        spec=flatten(spec),
        test={k: v for k, v in test.items() if isinstance(v, (int, float)) and v == v},  # NaN: not reported
        epochs_run=epochs,
        train_s=timings.get("train_s"),
        images_per_s=timings.get("images_per_s"),
        history=history,
    )


def compare_runs(paths: list[str | os.PathLike]) -> Comparison:
    """Read the runs and find the spec keys whose values differ between them (``name`` aside).

    Raises:
        CompareError: no runs, or any unreadable run (see :func:`read_run`).
    """
    if not paths:
        raise CompareError("give at least one run folder")
    runs = [read_run(p) for path in paths for p in (cv_folds(path) or [path])]  # a --folds folder: its folds
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:  # Why: two runs/digits-cnn from different parents need telling apart
            r.name = f"{r.path.parent.name}/{r.name}"
    keys = list(dict.fromkeys(k for r in runs for k in r.spec))
    differing = [
        k for k in keys if k != "name" and len({json.dumps(r.spec.get(k, _MISSING), default=str) for r in runs}) > 1
    ]
    return Comparison(runs=runs, differing=differing)


def plot_compare(comparison: Comparison, path: str | os.PathLike, curves: tuple[str, ...] = CURVES) -> Path:
    """compare.png: each run's validation loss and accuracy per epoch, overlaid (train_* where no val)."""
    import matplotlib

    matplotlib.use("Agg")  # Why: headless servers; never open a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.2), squeeze=False)
    for ax, key in zip(axes[0], curves, strict=True):
        shown = False
        for r in comparison.runs:
            epochs = [h.get("epoch") for h in r.history]
            use = key if any(key in h for h in r.history) else key.replace("val_", "train_")
            ys = [h.get(use, math.nan) for h in r.history]
            if any(isinstance(y, (int, float)) and not math.isnan(y) for y in ys):
                label = r.name + ("" if use == key else f" ({use})")
                ax.plot(epochs, ys, "-o", markersize=3, label=label)
                shown = True
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(fontsize=8)
    try:
        # Why quiet: with many runs matplotlib warns that the legend crowds the axes (raw Python warning
        # lines on stderr); the picture is still written, and the table is the full comparison
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
            return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def _read_spec(path: Path) -> dict:
    from convspec.specs import SpecError
    from convspec.specs.yamlio import parse_yaml, to_plain

    try:
        data = to_plain(parse_yaml(read_bytes(path, "spec"), str(path)))
    except FileReadError as e:  # a FIFO, a device, a folder: named, never opened
        raise CompareError(str(e)) from None
    except SpecError as e:
        raise CompareError(f"{path}: not a readable spec ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path}: not a spec (expected a mapping, got {type(data).__name__})")
    return data


def _read_results(path: Path) -> dict:
    from .results import read_results

    try:
        return read_results(path)
    except FileReadError as e:
        raise CompareError(str(e)) from None


def _read_history(path: Path) -> list[dict]:
    if not os.path.lexists(path):
        return []
    out = []
    try:
        lines = read_text(path, "json").splitlines()
    except FileReadError as e:
        raise CompareError(str(e)) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except ValueError as e:
            raise CompareError(f"{path}:{n}: not a JSON line ({e})") from None
        if isinstance(record, dict):
            out.append(record)
    return out


def _plain(v: Any) -> Any:
    return str(v)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)
