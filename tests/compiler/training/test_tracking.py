"""Trackers: TensorBoard events read back with EventAccumulator, MLflow runs found with MlflowClient."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convspec.compiler.training.tracking import Tracker, make_trackers, tracking_uri
from convspec.runtime.compare import flatten
from convspec.specs import load_spec
from convspec.specs.extras import MissingExtra

REPO = Path(__file__).resolve().parents[3]
EPOCHS = 3


def _spec(loggers: str = "[tensorboard, mlflow]", *extra: str):
    return load_spec(REPO / "examples" / "digits.yaml", overrides=[f"training.loggers={loggers}", *extra])


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _fake_run(tracker: Tracker, run: Path) -> None:
    for epoch in range(1, EPOCHS + 1):
        tracker.log_epoch(
            {
                "epoch": epoch,
                "lr": 0.001,
                "train_loss": 1 / epoch,
                "val_loss": 1.1 / epoch,
                "val_accuracy": 0.5 + 0.1 * epoch,
                "val_auc": math.nan,
            },
            epoch,
        )
    tracker.log_test({"accuracy": 0.93, "f1": 0.92})
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(run / "roc.png")
    (run / "model.onnx").write_bytes(b"onnx")
    (run / "report.md").write_text("# report\n")
    tracker.log_image("roc", run / "roc.png")
    tracker.log_artifacts([run / "model.onnx", run / "report.md", run / "missing.png"])


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    """The default local MLflow store: ./mlruns in a fresh working directory."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_tracker_logs_epochs_test_images_and_artifacts(local_store):
    from mlflow import MlflowClient

    spec = _spec()
    run = local_store / "runs" / "digits-cnn"
    run.mkdir(parents=True)
    with make_trackers(spec, run, rank0=True) as tracker:
        tracker.log_params(flatten(spec.to_dict()))
        _fake_run(tracker, run)
        run_id = tracker.mlflow_run_id

    acc = _events(run / "tensorboard")
    for tag in ("train_loss", "val_loss", "val_accuracy", "lr"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3], tag  # one scalar per epoch per metric
    assert [e.value for e in acc.Scalars("val_accuracy")] == pytest.approx([0.6, 0.7, 0.8])
    assert "val_auc" not in acc.Tags()["scalars"]  # NaN is not logged
    assert acc.Scalars("test_accuracy")[0].value == pytest.approx(0.93)
    assert "roc" in acc.Tags()["images"]
    assert any(t.startswith("spec") for t in acc.Tags()["tensors"])  # the spec as text

    assert tracking_uri().startswith("sqlite:///") and (local_store / "mlruns" / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name("digits-cnn")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_id == run_id and found.info.status == "FINISHED" and found.info.run_name == "digits-cnn"
    assert found.data.params["training.epochs"] == str(spec.training.epochs)
    assert found.data.params["model.layers.0.filters"] == "32"
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2, 3]
    assert found.data.metrics["test_accuracy"] == pytest.approx(0.93)
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"model.onnx", "report.md", "plots/roc.png"} <= names


@pytest.mark.slow
def test_trials_nest_under_the_study(local_store):
    from mlflow import MlflowClient

    spec = _spec()
    study_dir = local_store / "runs" / "digits-cnn-tune"
    study_dir.mkdir(parents=True)
    with make_trackers(spec, study_dir, rank0=True) as study:
        for k in range(2):
            trial = study_dir / "trials" / f"digits-cnn-trial-{k}"
            trial.mkdir(parents=True)
            with make_trackers(spec, trial, rank0=True, nested_under=study) as t:
                t.log_epoch({"val_accuracy": 0.5 + k}, 1)
                assert t.tensorboard_dir == study_dir / "tensorboard" / trial.name
    client = MlflowClient(tracking_uri=tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("digits-cnn").experiment_id])
    parent = [r for r in runs if r.info.run_name == "digits-cnn-tune"][0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["digits-cnn-trial-0", "digits-cnn-trial-1"]
    for k in range(2):
        acc = _events(study_dir / "tensorboard" / f"digits-cnn-trial-{k}")
        assert acc.Scalars("val_accuracy")[0].value == pytest.approx(0.5 + k)


def test_no_loggers_or_not_rank0_log_nothing(tmp_path):
    assert not make_trackers(_spec("[]"), tmp_path, rank0=True).enabled
    tracker = make_trackers(_spec(), tmp_path, rank0=False)
    assert not tracker.enabled
    tracker.log_epoch({"val_loss": 1.0}, 1)
    tracker.close()
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "mlruns").exists()


def test_loggers_key_is_validated():
    from convspec.specs import SpecError

    assert _spec("[tensorboard]").training.loggers == ["tensorboard"]
    with pytest.raises(SpecError, match="training.loggers"):
        _spec("[wandb]")


def test_missing_library_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingExtra, match=r'pip install "convspec\[track\]"'):
        make_trackers(_spec("[mlflow]"), tmp_path, rank0=True)


@pytest.mark.slow
def test_a_real_training_run_through_the_on_epoch_hook(local_store):
    """A real (1-epoch... 2-epoch) training run, the tracker fed by train()'s on_epoch hook."""
    from mlflow import MlflowClient

    from convspec.compiler.training.loop import train

    spec = _spec("[tensorboard, mlflow]", "training.epochs=2", "input.size=[8, 8]")
    run_dir = local_store / "runs" / "digits-cnn"
    run_dir.mkdir(parents=True)
    with make_trackers(spec, run_dir, rank0=True) as tracker:
        tracker.log_params(flatten(spec.to_dict()))
        # Why out=run_dir.parent and a pre-made folder: train() numbers its folder (digits-cnn-2); the
        # tracker only needs to know where to write, which the lead's wiring passes from inside train()
        run = train(
            spec,
            out=local_store / "train",
            progress=False,
            log=lambda _m: None,
            on_epoch=lambda r: tracker.log_epoch(r, r["epoch"]),
        )
        tracker.log_test(run.read_results()["test"]["metrics"])
        tracker.log_image("confusion", run.confusion)
        tracker.log_artifacts([run.onnx, run.report])
        run_id = tracker.mlflow_run_id
    history = run.history()
    acc = _events(run_dir / "tensorboard")
    for key in ("train_loss", "val_loss", "val_accuracy", "val_f1"):
        assert [e.value for e in acc.Scalars(key)] == pytest.approx([h[key] for h in history]), key
    client = MlflowClient(tracking_uri=tracking_uri())
    assert [m.value for m in client.get_metric_history(run_id, "val_loss")] == pytest.approx(
        [h["val_loss"] for h in history]
    )
    assert "model.onnx" in {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.slow
def test_convspec_tune_nests_each_trial_under_the_study(local_store):
    """A real ``tune`` with ``training.loggers: [mlflow]``: one study run, each trial a child of it."""
    from mlflow import MlflowClient

    from convspec.compiler.tuning.study import tune

    spec = load_spec(
        REPO / "examples" / "digits-tune.yaml",
        overrides=["training.loggers=[mlflow]", "training.epochs=1", "tune.trials=2"],
    )
    tune(spec, out=local_store / "runs", retrain=False)
    client = MlflowClient(tracking_uri=tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2 and all("val_accuracy" in c.data.metrics for c in children)


def test_a_tracker_that_cannot_start_is_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch):
    """``./mlruns`` a file: a FileExistsError traceback once; and every failed start left a run
    folder with spec.yaml, split.json and last.pt (one more per attempt)."""
    from convspec.compiler.training.loop import train
    from convspec.compiler.training.tracking import TrackingError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").write_text("a file where MLflow's store would go")
    spec = _spec("[mlflow]", "training.epochs=1")
    with pytest.raises(TrackingError, match="mlruns: cannot make MLflow's local store \\(it is a file\\)"):
        train(spec, out=tmp_path / "runs", export=False, progress=False, log=lambda _m: None)
    assert not (tmp_path / "runs").exists()  # not even the --out folder the call made
    (tmp_path / "kept").mkdir()  # an --out folder that was there stays
    with pytest.raises(TrackingError):
        train(spec, out=tmp_path / "kept", export=False, progress=False, log=lambda _m: None)
    assert (tmp_path / "kept").is_dir() and list((tmp_path / "kept").iterdir()) == []


def test_a_study_whose_tracker_cannot_start_leaves_no_tune_folder(tmp_path, monkeypatch):
    """tune wrote study.db and its marker, then failed on MLflow: a study that never ran stayed."""
    from convspec.compiler.training.tracking import TrackingError
    from convspec.compiler.tuning.study import tune

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").write_text("a file where MLflow's store would go")
    spec = load_spec(REPO / "examples" / "digits-tune.yaml", overrides=["training.loggers=[mlflow]", "tune.trials=1"])
    with pytest.raises(TrackingError, match="cannot make MLflow's local store"):
        tune(spec, out=tmp_path / "runs", retrain=False)
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_a_tracker_that_fails_while_logging_is_one_line_naming_it(local_store, monkeypatch):
    """A full disk under the event files or MLflow's artifacts, after training: one TrackingError that
    names the tracker and the reason (a traceback through tensorboard's gfile or shutil before); the
    MLflow run is ended FAILED, not left RUNNING."""
    import errno

    from mlflow import MlflowClient

    from convspec.compiler.training import tracking

    def full(self, name, png):
        raise OSError(errno.ENOSPC, "No space left on device", str(png))

    for backend in (tracking._TensorBoard, tracking._MLflow):
        monkeypatch.setattr(backend, "log_image", full)
        run = local_store / backend.__name__
        run.mkdir()
        tracker = make_trackers(_spec(), run, rank0=True)
        with pytest.raises(tracking.TrackingError) as e, tracker:
            _fake_run(tracker, run)
        first = "TensorBoard events in" if backend is tracking._TensorBoard else "MLflow at sqlite:///"
        assert str(e.value).startswith(first) and "log image failed (no space left on device: " in str(e.value)
        assert "\n" not in str(e.value)
        monkeypatch.undo()
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.chdir(local_store)
    client = MlflowClient(tracking_uri=tracking_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and {r.info.status for r in runs} == {"FAILED"}
