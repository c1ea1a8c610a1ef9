"""The finishing phase of a run: test with the best weights, write results, plots and report, export."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..data.dataset import Dataset
from ..run import checkpoint, report
from ..run.files import writing
from ..run.folder import Run
from .epoch import Setup, evaluate
from .progress import Log
from .state import TrainState


@dataclass
class Timings:
    t_start: float  # time.perf_counter() when the run began
    data_s: float
    train_s: float
    images_seen: int


def finish(
    run: Run, setup: Setup, state: TrainState, data: Dataset, timings: Timings, *,
    stopped_early: bool, test: bool, export: bool, log: Log,
) -> dict:  # fmt: skip
    """Load ``best.pt``, score the test split, write results.json, plots and report.md, export ONNX.

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
        "timings": {
            "data_s": timings.data_s,
            "train_s": timings.train_s,
            "images_per_s": timings.images_seen / max(timings.train_s, 1e-9),
        },
    }
    if not setup.dd.is_main:
        return results
    if test and len(data.splits["test"]):
        tested = evaluate(setup, model, "test", detail=True, class_names=data.class_names)
        results["test"] = {"loss": tested["loss"], "metrics": tested["metrics"], "per_class": tested["per_class"]}
    with writing(run.path, "the results, plots and report"):
        run.write_json(run.results, results)
        if state.history:
            report.plot_curves(state.history, run.curves)
        if "test" in results:
            confusion = results["test"]["per_class"]["confusion"]
            report.plot_confusion(confusion, data.class_names, run.confusion, f"{spec.name}: test split")
        report.write_report(run.report, results)
    if export:
        from ..export.onnx import export_onnx

        export_onnx(run, log=log)
    acc = results.get("test", {}).get("metrics", {}).get("accuracy")
    tail = f" (test accuracy {acc * 100:.2f} %)" if acc is not None else ""
    log(f"done in {time.perf_counter() - timings.t_start:.1f} s: {run}{tail}")
    return results
