"""The finishing phase of a run: test with the best weights, write results, plots and report, export."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from convspec.runtime.threshold import describe_threshold, threshold_record

from ..data.dataset import Dataset
from ..export.onnx import export_images, record_export, wants_int8
from ..export.worker import ExportWorker, export_run
from ..run import checkpoint, report
from ..run.files import writing
from ..run.folder import Run
from ..run.plots import one_glyph_warning, plot_results, worst_mistakes
from .epoch import Setup, evaluate
from .progress import Log
from .records import EpochLog
from .state import TrainState


@dataclass
class Timings:
    t_start: float  # time.perf_counter() when the run began
    data_s: float
    train_s: float
    images_seen: int


def finish(
    run: Run, setup: Setup, state: TrainState, data: Dataset, timings: Timings, epoch_log: EpochLog, *,
    stopped_early: bool, test: bool, export: bool, log: Log, worker: ExportWorker | None = None,
) -> dict:  # fmt: skip
    """Load ``best.pt``, choose a binary threshold on validation, score the test split, write
    results.json, the pictures and report.md, export ONNX (in ``worker`` when there is one, while
    the pictures are drawn), and hand all of it to the trackers.

    Only rank 0 writes. Returns the results (as written to ``results.json``).
    """
    spec, model = setup.spec, state.model
    if run.best.exists():
        model.load_state_dict(checkpoint.load(run.best)["model"])
    results = {
        "name": spec.name,
        "task": spec.task,
        "classes": data.class_names,
        "counts": data.counts(),
        "bad_files": data.bad_files,
        "epochs": spec.training.epochs,
        "epochs_run": state.history[-1]["epoch"] if state.history else 0,
        "stopped_early": stopped_early,
        "best_epoch": state.monitor.best_epoch,
        "monitor": state.monitor.name,
        "device": str(setup.place.device),
        "precision": setup.place.precision,
        "world_size": setup.dd.world,
        **({"init": state.init} if state.init is not None else {}),
        **({"normalize": _auto_statistics(spec, model)} if getattr(model, "needs_normalization", False) else {}),
        "timings": {
            "data_s": timings.data_s,
            "train_s": timings.train_s,
            "images_per_s": timings.images_seen / max(timings.train_s, 1e-9),
        },
    }
    if not setup.dd.is_main:
        return results
    if test and spec.task == "binary":  # the model's operating point, with or without a test split
        results["threshold"] = _threshold(setup, model, data)
        if "missed" in results["threshold"]:
            log(f"warning: {results['threshold']['missed']}")
    tested = _test(setup, model, data, results) if test and len(data.splits["test"]) else None
    with writing(run.path, "the results, plots and report"):
        run.write_json(run.results, results)  # before the export: the model's metadata carries its metrics
    # what the export checks the model on, from the data in memory: it never decodes the data again
    images = export_images(setup.spec, data, int8=wants_int8(setup.spec, None)) if export else None
    exporting = export and worker is not None and worker.begin(run, images=images)  # it exports while we draw
    with writing(run.path, "the results, plots and report"):
        with one_glyph_warning(log):
            pictures = _pictures(run, setup, state, data, results, tested)
        report.write_report(run.report, results)
    if export:
        record_export(run, export_run(worker if exporting else None, run, log, images), log, results)
    epoch_log.finish(results, pictures)
    acc = results.get("test", {}).get("metrics", {}).get("accuracy")
    tail = f" (test accuracy {acc * 100:.2f} %)" if acc is not None else ""
    log(f"done in {time.perf_counter() - timings.t_start:.1f} s: {run}{tail}")
    return results


def _auto_statistics(spec, model) -> list[dict]:
    """The statistics each ``normalize: {mean: auto}`` step computed from the training split (the
    resolved spec still says ``auto``; they live in the weights and the exported graph)."""
    auto = [i for i, step in enumerate(spec.preprocess) if getattr(step, "mean", None) == "auto"]
    return [
        {"preprocess": i, "mean": step.mean.flatten().tolist(), "std": step.std.flatten().tolist()}
        for i, step in zip(auto, model.preprocess.auto_normalize, strict=True)
    ]


def _threshold(setup: Setup, model, data: Dataset) -> dict:
    """``export.threshold`` chosen on the validation split: results.json's ``threshold`` entry."""
    val = evaluate(setup, model, "val") if len(data.splits["val"]) else {"labels": [], "probs": []}
    return threshold_record(setup.spec.export.threshold, val["labels"], val["probs"])


def _test(setup: Setup, model, data: Dataset, results: dict) -> dict:
    """Test metrics into ``results`` (binary: at the chosen threshold, which it describes); the raw scores."""
    tested = evaluate(setup, model, "test", detail=True, class_names=data.class_names)
    record = results.get("threshold")
    if record is not None:
        record["test"] = describe_threshold(tested["labels"], tested["probs"], record["value"])
        if record["value"] != 0.5:
            tested = evaluate(
                setup, model, "test", detail=True, class_names=data.class_names, threshold=record["value"]
            )
    results["test"] = {"loss": tested["loss"], "metrics": tested["metrics"], "per_class": tested["per_class"]}
    results["test"]["mistakes"] = _mistakes(data, tested, setup.spec.task, results.get("threshold", {}).get("value"))
    return tested


MISTAKES = 100  # listed in results.json by file, most confident first (report.md shows the first 20)


def _mistakes(data: Dataset, tested: dict, task: str, threshold: float | None) -> list[dict]:
    """The test split's wrong predictions by file: what the pictures show, findable in the data."""
    idx, names = data.splits["test"], data.class_names
    worst = worst_mistakes(tested["labels"], tested["probs"], task, threshold, MISTAKES)
    return [
        {
            "file": data.file_id(int(idx[i])),
            "true": names[int(tested["labels"][i])],
            "predicted": names[pred],
            "probability": p,
        }
        for i, pred, p in worst
    ]


def _pictures(run: Run, setup: Setup, state: TrainState, data: Dataset, results: dict, tested) -> list[Path]:
    """curves.png, confusion.png and (with a test split) errors, roc, pr and calibration pictures."""
    drawn = []
    if state.history:
        report.plot_curves(state.history, run.curves)
        drawn.append(run.curves)
    if tested is None:
        return drawn
    confusion = results["test"]["per_class"]["confusion"]
    report.plot_confusion(confusion, data.class_names, run.confusion, f"{setup.spec.name}: test split")
    drawn.append(run.confusion)
    threshold = results.get("threshold", {}).get("value")
    images = data.rows("test")  # (n, C, H, W) uint8, the pixels the model saw; the grid reads 32 of them
    drawn += plot_results(run.path, images, tested["labels"], tested["probs"], data.class_names, setup.spec.task,
                          threshold=threshold).values()  # fmt: skip
    return [Path(p) for p in drawn if p is not None]
