"""Hyperparameter search over a spec's ``tune.space`` with Optuna.

Every trial is a whole spec: the sampled values are set at their dotted paths with
``apply_values`` and validated like a file, then trained with ``train(export=False,
test=False)``. Trials are judged on the validation split only; the test split is evaluated
once, when the winning spec is retrained at the end.

The study lives in a database (default: SQLite at ``<out>/<study>-tune/study.db``), so a
search survives Ctrl-C and can be continued by running the same command again, and several
processes on several machines can share one study through ``--storage`` (PostgreSQL).
Each process runs its own ``trials`` (Optuna's ``n_trials``): two processes started with
``--trials 4`` finish 8 trials of the study between them.

Folder ``<out>/<study>-tune/``::

    study.db        the Optuna study (default storage)
    trials/         one run folder per trial (NAME-trial-K: spec, metrics, checkpoints)
    trials.csv      every trial: number, value, times, params_*, user_attrs_*, state
    history.png     objective value per trial, and the best so far
    importance.png  parameter importances (needs >= 2 complete trials)
    best.yaml       the winning spec, without its tune section: ``convspec train best.yaml``
    tune.json       study, storage, best trial and the retrained run's test metrics
    NAME/           the winning spec retrained once, with model.onnx and test metrics
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convspec.runtime.compare import flatten
from convspec.runtime.files import atomic_write_text, json_text
from convspec.specs import Spec, SpecError, apply_values, get_value, load_spec
from convspec.specs.errors import format_path
from convspec.specs.spec import ChoiceDist, FloatDist, IntDist

from ..run.files import check_run_out
from ..run.folder import mark_run_folder
from ..training.tracking import make_trackers
from .errors import TuneError
from .report import (
    counts_text,
    fmt_values,
    render,
    state_counts,
    trial_line,
    trial_row,
    trials_table,
    write_csv,
    write_plots,
)
from .storage import load_optuna, open_storage, open_study, storage_failure

__all__ = ["tune", "TuneResult", "TuneError"]

_PRIMITIVE = (type(None), bool, int, float, str)


@dataclass
class TuneResult:
    """What a search produced. Paths are inside ``folder`` (``<out>/<study>-tune/``).

    Attributes:
        folder: the tune folder.
        study_name: the Optuna study's name.
        storage: the storage URL (password hidden).
        metric: the monitored validation metric; direction: maximize or minimize.
        best_number: the best trial's number; best_value: its objective value.
        best_values: the winning values, by dotted path.
        best_spec: the winning spec (no tune section); best_yaml: where it was written.
        trials: one dict per trial of the study (number, state, value, values, note).
        run: the retrained best spec's run folder (None with ``retrain=False``).
        test: that run's test metrics (None without a test split or retrain).
        files: written artifacts by name (``trials.csv``, ``history.png``, ...).
        notes: things skipped, each with why (e.g. importance.png).
    """

    folder: Path
    study_name: str
    storage: str
    metric: str
    direction: str
    best_number: int
    best_value: float
    best_values: dict[str, Any]
    best_spec: Spec
    best_yaml: Path
    trials: list[dict[str, Any]] = field(default_factory=list)
    run: Any = None
    test: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def table(self):
        """The trials as a Rich table (number, state, value, one column per parameter)."""
        return trials_table(self.trials, self.metric, self.best_number)


# ------------------------------------------------------------------------------- API


def tune(
    spec: Spec | str | os.PathLike,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | os.PathLike = "runs",
    overrides: list[str] | None = None,
    retrain: bool = True,
    log: Callable[[str], None] | None = print,
    progress: bool = True,
    allow_out_in_data: bool = False,
) -> TuneResult:
    """Search ``spec.tune.space`` with Optuna, write the tune folder and retrain the winner.

    Args:
        spec: a Spec with a ``tune`` section, or the path of a spec file.
        trials: trials this process runs (default ``tune.trials``). Processes sharing a
            study each run their own: 2 processes x 4 trials = 8 trials in the study.
        timeout: stop starting new trials after this many seconds (default ``tune.timeout``).
        storage: an Optuna RDB URL (``sqlite:///study.db``, ``postgresql://user:pw@host/db``)
            or a file path (SQLite). Default: ``<out>/<study>-tune/study.db``.
        study_name: the study's name in the storage (default: the spec's name). An existing
            study of that name is continued.
        out: parent folder of the tune folder ``<study>-tune/``.
        overrides: ``KEY=VALUE`` strings applied to a spec file (``--set``).
        retrain: train the best spec once more at the end, with export and the test split.
        log: where progress lines and the trial table go (None: silent).
        progress: show a progress bar while retraining the best spec.
        allow_out_in_data: permit an ``out`` inside the data folder (``--allow-out-in-data``).

    Returns:
        A TuneResult (best trial, its spec, written files, the retrained run's test metrics).

    Raises:
        SpecError: the spec or its tune section is invalid (unknown path, empty choice, low > high).
        TuneError: no tune section, an empty space, grid over a continuous float, a metric
            that training does not compute, an unreachable storage, a study with the other
            direction, or no trial completed. All are raised before any trial trains except
            the last.
    """
    log = log or (lambda _m: None)
    if not isinstance(spec, Spec):
        spec = load_spec(spec, overrides=overrides)
    elif overrides:
        raise TuneError("overrides apply to a spec file; pass the path instead of a Spec")
    _check_tunable(spec)
    t = spec.tune
    n_trials = t.trials if trials is None else trials
    if n_trials < 1:
        raise TuneError(f"--trials must be >= 1 (got {n_trials})")
    timeout = t.timeout if timeout is None else timeout
    if timeout is not None and not timeout >= 1:  # Why: 0 or 1e-9 started a trial, stopped it, and failed
        raise TuneError(f"--timeout must be at least 1 s (got {timeout}); leave it out for no limit")
    study_name = study_name or spec.name
    folder = Path(out) / f"{study_name}-tune"
    check_run_out(out, spec, allow_in_data=allow_out_in_data)
    grid = _grid_space(spec) if t.sampler == "grid" else None  # errors before any trial

    optuna = load_optuna()
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # Why: we log one line per trial ourselves
    try:
        study, joined, shown, study_tracker = _open(optuna, storage, folder, study_name, spec, grid)
    except BaseException:
        optuna.logging.set_verbosity(previous)
        raise

    base = spec.model_copy(deep=True)
    base._source, base._base_dir = spec.source_file, spec.base_dir
    study_tracker.log_params(flatten(spec.to_dict()))
    objective = _Objective(base, folder / "trials", optuna, study_tracker)
    where = f"study {study_name!r} in {shown}"
    log(
        f"tuning {spec.name}: {n_trials} trial(s) of {where}, {t.sampler} sampler, "
        f"{t.pruner} pruner, {t.metric} ({t.resolved_direction})"
        + (f", grid of {math.prod(len(v) for v in grid.values())} points" if grid else "")
        + (" (joining existing trials)" if joined else "")
    )
    if not joined and grid is None:
        start = _values_in_space(spec)
        if start is not None:
            # Why: trial 0 is the spec as written, so the search never reports worse than it.
            study.enqueue_trial(_encode_params(spec, start), user_attrs={"note": "the spec as written"})

    t0 = time.perf_counter()
    try:
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=timeout,
            catch=(SpecError,),
            callbacks=[lambda s, ft: log(trial_line(ft, t.metric))],
            gc_after_trial=True,
        )
    except (KeyboardInterrupt, _training_interrupted()):
        raise TuneError(
            f"interrupted; {where} keeps its finished trials: run the same command again to continue"
        ) from None
    except Exception as e:  # noqa: BLE001 - a storage failure mid-search (a full disk) gets its one line
        raise storage_failure(e, shown) from None
    finally:
        optuna.logging.set_verbosity(previous)
        study_tracker.close()
    log(f"search done in {time.perf_counter() - t0:.1f} s")

    # -- outputs ---------------------------------------------------------------------------
    rows = [trial_row(ft) for ft in study.get_trials(deepcopy=False)]
    files, notes = {}, []
    files["trials.csv"] = write_csv(study.get_trials(deepcopy=False), folder / "trials.csv")
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best_number = study.best_trial.number if complete else -1
    log(render(trials_table(rows, t.metric, best_number)))
    for name, why in write_plots(optuna, study, folder, rows).items():
        if why is None:
            files[name] = folder / name
        else:
            notes.append(f"{name} skipped: {why}")
            log(f"{name} skipped: {why}")
    if not complete:
        errors = [r["note"] for r in rows if r["state"] == "FAIL" and r["note"]]
        raise TuneError(
            f"no trial of {where} completed ({counts_text(rows)})" + (f"; first error: {errors[0]}" if errors else "")
        )

    best = study.best_trial
    best_values = _trial_values(best, spec)
    best_spec = apply_values(spec, best_values, name=f"trial {best.number}")
    best_spec.tune = None
    best_spec._source = spec.source_file
    header = (
        f"# best of {where}: trial {best.number} of {len(rows)}, {t.metric} {best.value:.6g}\n"
        f"# from {spec.source_file}; values: {json.dumps(best_values)}\n"
    )
    best_yaml = folder / "best.yaml"
    atomic_write_text(best_yaml, header + best_spec.to_yaml())
    files["best.yaml"] = best_yaml
    log(f"best: trial {best.number}, {t.metric} {best.value:.4f}, {fmt_values(best_values)} -> {best_yaml}")

    result = TuneResult(
        folder=folder,
        study_name=study_name,
        storage=shown,
        metric=t.metric,
        direction=t.resolved_direction,
        best_number=best.number,
        best_value=float(best.value),
        best_values=best_values,
        best_spec=best_spec,
        best_yaml=best_yaml,
        trials=rows,
        files=files,
        notes=notes,
    )
    if retrain:
        from ..training.loop import train

        log("retraining the best spec with export, then the test split (evaluated once, after the search)")
        run = train(
            best_spec.model_copy(deep=True), out=folder, export=True, progress=progress, log=log, allow_out_in_data=True
        )
        result.run = run
        result.test = run.read_results().get("test", {}).get("metrics")
    summary = {
        "study": study_name,
        "storage": shown,
        "metric": t.metric,
        "direction": t.resolved_direction,
        "sampler": t.sampler,
        "pruner": t.pruner,
        "counts": state_counts(rows),
        "best": {"trial": best.number, "value": best.value, "values": best_values},
        "best_yaml": str(best_yaml),
        "run": str(result.run) if result.run else None,
        "test": result.test,
        "notes": notes,
    }
    files["tune.json"] = atomic_write_text(folder / "tune.json", json_text(summary, indent=2) + "\n")
    if result.test:
        log(
            "test (best spec, retrained): "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.test.items() if isinstance(v, (int, float)))
        )
    return result


def _open(optuna, storage: str | None, folder: Path, study_name: str, spec: Spec, grid: dict | None):
    """``(study, joined, shown URL, the study's tracker)``: the study created or joined, then its
    tracker. Why undone when the tracker cannot start (a broken MLflow store): a study this call
    created never ran, and its tune folder is nobody's to keep."""
    created = not os.path.lexists(folder)
    store, shown = open_storage(storage, folder)
    study, joined = open_study(optuna, store, shown, study_name, spec, grid)
    mark_run_folder(folder)  # Why: its plots and trial runs are never data
    try:
        tracker = make_trackers(spec, folder, rank0=True)  # each trial's run nests under it
    except BaseException:
        if not joined:
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=study_name, storage=store)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return study, joined, shown, tracker


# ------------------------------------------------------------------------ checks


def _check_tunable(spec: Spec) -> None:
    """Everything that can be known before a trial: a tune section, a space, a metric."""
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise TuneError(
            "tune runs its trials in one process; to search in parallel, start several "
            "`convspec tune` processes that share one study with --storage"
        )
    t = spec.tune
    if t is None:
        raise TuneError(
            f"{spec.source_file}: has no tune section (add tune: {{space: {{training.optimizer.lr: "
            "{type: float, low: 0.0001, high: 0.01, log: true}}})"
        )
    if not t.space:
        raise TuneError(f"{spec.source_file}: tune.space is empty: nothing to search")
    computed = {"val_loss", "val_accuracy", *(f"val_{m}" for m in spec.training.metrics)}
    if t.metric not in computed:
        raise TuneError(
            f"{spec.source_file}: tune.metric is {t.metric}, but training computes only "
            f"{', '.join(sorted(computed))}; add {t.metric[4:]} to training.metrics"
        )
    for path, d in t.space.items():
        if isinstance(d, (FloatDist, IntDist)) and d.log and d.step not in (None, 1):
            raise TuneError(
                f"{spec.source_file}: tune.space.{path}: log scale and step cannot be combined (got step {d.step})"
            )


def _grid_space(spec: Spec) -> dict[str, list]:
    """The grid sampler's finite values per path; a continuous float is an error."""
    grid = {}
    for path, d in spec.tune.space.items():
        if isinstance(d, FloatDist):
            if d.step is None:
                raise TuneError(
                    f"{spec.source_file}: tune.space.{path}: the grid sampler needs finite values, but this "
                    f"float is continuous; give it a step, make it a choice, or use sampler: tpe or random"
                )
            n = int(math.floor((d.high - d.low) / d.step + 1e-9)) + 1
            grid[path] = [round(d.low + i * d.step, 12) for i in range(n)]
        elif isinstance(d, IntDist):
            grid[path] = list(range(d.low, d.high + 1, d.step))
        else:
            grid[path] = _encode_choices(d.values)
    return grid


# ---------------------------------------------------------------------- objective


class _Objective:
    """One trial: sample, apply to the spec (invalid -> FAIL), train on train, judge on val."""

    def __init__(self, base: Spec, trials_dir: Path, optuna, tracker=None):
        self.base, self.trials_dir, self.optuna, self.tracker = base, trials_dir, optuna, tracker
        t = base.tune
        self.metric, self.maximize, self.pruning = t.metric, t.resolved_direction == "maximize", t.pruner != "none"

    def __call__(self, trial) -> float:
        from ..training.loop import train

        values = {path: _suggest(trial, path, d) for path, d in self.base.tune.space.items()}
        trial.set_user_attr("values", values)
        try:
            spec = apply_values(self.base, values, name=f"trial {trial.number}")
        except SpecError as e:
            # Why re-raise: optimize(catch=(SpecError,)) records the trial as FAIL and goes on.
            # Why no FILE:LINE: the trial's YAML is generated; the key path says where.
            trial.set_user_attr(
                "error", "; ".join(f"{format_path(i.path)}: {i.message}" if i.path else i.message for i in e.issues)
            )
            raise
        spec.tune = None
        spec.name = f"{self.base.name}-trial-{trial.number}"
        trial.set_user_attr("run", str(self.trials_dir / spec.name))
        best = {"value": None}

        def on_epoch(record: dict) -> None:
            value = record.get(self.metric)
            epoch = record["epoch"]
            if value is None or math.isnan(value):
                trial.set_user_attr("error", f"{self.metric} is NaN at epoch {epoch} (diverged)")
                raise self.optuna.TrialPruned(f"{self.metric} is NaN at epoch {epoch}")
            if best["value"] is None or (value > best["value"] if self.maximize else value < best["value"]):
                best["value"] = value
                trial.set_user_attr("best_epoch", epoch)
            trial.report(value, epoch)
            if self.pruning and trial.should_prune():
                trial.set_user_attr("pruned_at", epoch)
                raise self.optuna.TrialPruned(f"pruned at epoch {epoch}")

        # Why test=False: the test split must never guide (or even be seen by) the search.
        run = train(
            spec,
            out=self.trials_dir,
            export=False,
            test=False,
            progress=False,
            log=lambda _m: None,
            on_epoch=on_epoch,
            allow_out_in_data=True,  # Why: tune() checked its --out already
            tracker_parent=self.tracker,
        )
        trial.set_user_attr("run", str(run))
        if best["value"] is None:
            raise self.optuna.TrialPruned("no epoch ran")
        return best["value"]


def _suggest(trial, path: str, d) -> Any:
    if isinstance(d, FloatDist):
        return trial.suggest_float(path, d.low, d.high, log=d.log, step=d.step)
    if isinstance(d, IntDist):
        return trial.suggest_int(path, d.low, d.high, step=d.step, log=d.log)
    encoded = _encode_choices(d.values)
    picked = trial.suggest_categorical(path, encoded)
    return d.values[encoded.index(picked)]


def _encode_choices(values: list) -> list:
    """Optuna's categorical choices: primitives as they are; lists and mappings as JSON text.

    Why JSON rather than an index: trials.csv and the table then show the value itself.
    """
    if all(isinstance(v, _PRIMITIVE) for v in values):
        return list(values)
    return [json.dumps(v, sort_keys=True) for v in values]


def _encode_params(spec: Spec, values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for path, v in values.items():
        d = spec.tune.space[path]
        out[path] = _encode_choices(d.values)[d.values.index(v)] if isinstance(d, ChoiceDist) else v
    return out


def _values_in_space(spec: Spec) -> dict[str, Any] | None:
    """The spec's own values at the tuned paths, where every one lies inside its range."""
    values = {}
    for path, d in spec.tune.space.items():
        v = get_value(spec, path)
        if isinstance(d, ChoiceDist):
            if v not in d.values:
                return None
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not d.low <= v <= d.high:
            return None
        elif isinstance(d, IntDist) and (v != int(v) or (int(v) - d.low) % d.step):
            return None
        values[path] = v
    return values


def _trial_values(ft, spec: Spec) -> dict[str, Any]:
    """A finished trial's values by path (the user attr, else decoded from its params)."""
    if isinstance(ft.user_attrs.get("values"), dict):
        return dict(ft.user_attrs["values"])
    values = {}
    for path, p in ft.params.items():
        d = spec.tune.space.get(path)
        if isinstance(d, ChoiceDist):
            enc = _encode_choices(d.values)
            values[path] = d.values[enc.index(p)] if p in enc else p
        else:
            values[path] = p
    return values


def _training_interrupted():
    from ..training.errors import TrainingInterrupted

    return TrainingInterrupted
