"""The training loop on real data (CPU): run folder, reproducibility, resume, bad files, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convspec.compiler.run import checkpoint
from convspec.compiler.training.loop import train
from convspec.specs import ConvspecError, load_spec, load_spec_text

REPO = Path(__file__).resolve().parents[3]
DIGITS = REPO / "examples" / "digits.yaml"
QUIET = {"progress": False, "log": lambda _m: None}


def small_digits(*extra: str):
    """examples/digits.yaml, smaller and shorter: a few seconds on one core."""
    return load_spec(DIGITS, overrides=["input.size=[8, 8]", "training.epochs=3", "model.layers.2.filters=16", *extra])


def test_run_folder_holds_everything_spec_md_lists(tmp_path):
    run = train(small_digits(), out=tmp_path, export=False, **QUIET)
    for name in (
        "spec.yaml",
        "split.json",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
        "curves.png",
        "confusion.png",
        "report.md",
        "results.json",
    ):
        assert (run.path / name).is_file(), name
    history = run.history()
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_f1", "lr", "images_per_s"} <= set(
        history[0]
    )
    results = run.read_results()
    assert (
        set(results["counts"]["test"]) == {str(d) for d in range(10)} and sum(results["counts"]["test"].values()) == 180
    )
    assert set(results["test"]["metrics"]) >= {"accuracy", "precision", "recall", "f1"}
    assert results["test"]["metrics"]["accuracy"] > 0.5  # 3 epochs at 8x8 already learn digits
    report = run.report.read_text()
    assert "## Test split" in report and "| 7 |" in report
    # the saved spec is the resolved one and loads as is
    assert load_spec_text(run.spec.read_text()).training.epochs == 3
    # a second run with the same name is numbered
    assert train(small_digits("training.epochs=1"), out=tmp_path, export=False, **QUIET).path.name == "digits-cnn-2"


def test_checkpoints_are_state_dicts_loaded_weights_only(tmp_path):
    run = train(small_digits("training.epochs=1"), out=tmp_path, export=False, **QUIET)
    state = checkpoint.load(run.best)
    assert state["epoch"] == 1 and state["class_names"] == [str(d) for d in range(10)]
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
    assert load_spec_text(state["spec"]).name == "digits-cnn"
    torch.load(run.best, weights_only=True)  # nothing but tensors and plain data


def test_seeded_runs_are_reproducible_on_cpu(tmp_path):
    a = train(small_digits(), out=tmp_path / "a", export=False, **QUIET)
    b = train(small_digits(), out=tmp_path / "b", export=False, **QUIET)
    strip = lambda hs: [{k: v for k, v in h.items() if k not in ("time_s", "images_per_s")} for h in hs]  # noqa: E731
    assert strip(a.history()) == strip(b.history())
    assert a.read_results()["test"] == b.read_results()["test"]


@pytest.mark.slow
def test_seeded_runs_with_the_export_worker_are_reproducible(tmp_path, monkeypatch):
    """The worker's warm-up never changes the thread count mid-run (a step's sums depend on it): a
    short run trains on one thread fewer throughout, a long one pauses the worker and uses them all."""
    from convspec.compiler.training import device

    strip = lambda hs: [{k: v for k, v in h.items() if k not in ("time_s", "images_per_s")} for h in hs]  # noqa: E731
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = train(small_digits(), out=tmp_path / "a", **QUIET)
        b = train(small_digits(), out=tmp_path / "b", **QUIET)
        assert strip(a.history()) == strip(b.history())
        monkeypatch.setattr(device, "SHORT_RUN_MACS", 0.0)  # every run is long: the worker is paused
        c = train(small_digits(), out=tmp_path / "c", **QUIET)
        d = train(small_digits(), out=tmp_path / "d", export=False, **QUIET)  # no worker at all
        assert strip(c.history()) == strip(d.history()) and c.onnx.exists()
        assert c.read_results()["test"] == d.read_results()["test"]
    finally:
        torch.set_num_threads(before)


def test_resume_continues_to_the_same_result(tmp_path):
    """Stopping after epoch 2 of 4 and resuming ends exactly where an uninterrupted run does."""
    from convspec.compiler.training.loop import TrainingInterrupted

    full = train(small_digits("training.epochs=4"), out=tmp_path / "full", export=False, **QUIET)

    def stop_after_2(record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(small_digits("training.epochs=4"), out=tmp_path / "part", export=False, on_epoch=stop_after_2, **QUIET)
    part = tmp_path / "part" / "digits-cnn"
    assert checkpoint.load(part / "last.pt")["epoch"] == 2
    resumed = train(resume=part, export=False, **QUIET)
    assert resumed.path == part
    strip = lambda hs: [{k: v for k, v in h.items() if k not in ("time_s", "images_per_s")} for h in hs]  # noqa: E731
    assert strip(resumed.history()) == strip(full.history())
    assert resumed.read_results()["test"]["metrics"] == full.read_results()["test"]["metrics"]
    # the timings cover all four epochs, the two before the resume too (they counted two before)
    timings, history = resumed.read_results()["timings"], resumed.history()
    images = timings["images_per_s"] * timings["train_s"]
    assert images == pytest.approx(4 * sum(full.read_results()["counts"]["train"].values()))
    assert timings["train_s"] >= sum(h["time_s"] for h in history)


def test_ctrl_c_inside_a_checkpoint_write_names_the_epoch_last_pt_holds(tmp_path, monkeypatch):
    """Ctrl-C while epoch 2's last.pt is written: the file keeps epoch 1 (atomic write), and the
    message said "holds epoch 2"; it names epoch 1, which --resume then continues after."""
    from convspec.compiler.training import loop
    from convspec.compiler.training.loop import TrainingInterrupted

    real = loop.checkpoint.save

    def ctrl_c_in_epoch_2s_write(path, state):
        if path.name == "last.pt" and state["epoch"] == 2:
            raise KeyboardInterrupt
        return real(path, state)

    monkeypatch.setattr(loop.checkpoint, "save", ctrl_c_in_epoch_2s_write)
    with pytest.raises(TrainingInterrupted, match="last.pt holds epoch 1. Continue with"):
        train(small_digits("training.epochs=3"), out=tmp_path, export=False, **QUIET)
    assert checkpoint.load(tmp_path / "digits-cnn" / "last.pt")["epoch"] == 1


def test_resume_with_more_epochs_records_them_in_spec_yaml(tmp_path):
    """``--resume RUN --set training.epochs=N``: spec.yaml says N afterwards (it kept the old
    count, so compare showed no difference between the runs), and export still accepts the run."""
    from convspec.compiler.export.onnx import export_onnx
    from convspec.specs import load_spec

    run = train(small_digits("training.epochs=1"), out=tmp_path, export=False, **QUIET)
    train(resume=run.path, overrides=["training.epochs=2"], export=False, **QUIET)
    assert load_spec(run.spec).training.epochs == 2 and len(run.history()) == 2
    export_onnx(run, log=lambda _m: None)


def test_resume_refuses_a_different_spec_with_a_diff(tmp_path):
    part = train(small_digits("training.epochs=1"), out=tmp_path, export=False, **QUIET)
    with pytest.raises(checkpoint.CheckpointError, match=r"(?s)cannot resume.*filters: 16"):
        train(small_digits("model.layers.0.filters=16"), resume=part.path, export=False, **QUIET)


def test_early_stopping_and_schedulers(tmp_path):
    spec = small_digits(
        "training.epochs=30",
        "training.early_stopping={monitor: val_accuracy, patience: 2}",
        "training.scheduler={type: plateau, patience: 0, factor: 0.5}",
        "training.optimizer={type: sgd, lr: 0.3}",
    )
    run = train(spec, out=tmp_path, export=False, **QUIET)
    results = run.read_results()
    assert results["stopped_early"] and results["epochs_run"] < 30
    lrs = [h["lr"] for h in run.history()]
    assert min(lrs) < lrs[0]  # plateau cut the rate


def test_binary_task_with_class_weights_and_smoothing(tmp_path):
    spec = load_spec(
        REPO / "examples" / "digits-binary.yaml",
        overrides=[
            "training.epochs=2",
            "input.size=[8, 8]",
            "training.loss={label_smoothing: 0.1, class_weights: balanced}",
        ],
    )
    run = train(spec, out=tmp_path, export=False, **QUIET)
    results = run.read_results()
    assert results["classes"] == ["3", "8"]
    assert 0.0 <= results["test"]["metrics"]["auc"] <= 1.0
    assert len(results["test"]["per_class"]["confusion"]) == 2


def test_folder_with_bad_images_trains_and_names_them(digits_folder, tmp_path):
    data = tmp_path / "digits"
    shutil.copytree(digits_folder, data)
    good = next((data / "3").iterdir()).read_bytes()
    (data / "3" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "5" / "empty.jpg").write_bytes(b"")
    (data / "7" / "notes.png").write_text("this is not an image\n")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(DIGITS.read_text().replace("{type: builtin, name: digits}", "{type: folder, path: digits}"))
    messages: list[str] = []
    spec = load_spec(spec_file, overrides=["input.size=[8, 8]", "training.epochs=1"])
    run = train(spec, out=tmp_path / "runs", export=False, progress=False, log=messages.append)
    bad = dict(run.read_results()["bad_files"])
    assert {Path(p).name for p in bad} == {"truncated.png", "empty.jpg", "notes.png"}
    report = run.report.read_text()
    for name in ("truncated.png", "empty.jpg", "notes.png"):
        assert name in report and any(name in m for m in messages)


def test_disk_cache_trains_with_augmentation_twice_alike(digits_folder, tmp_path):
    """With ``cache: disk`` the second run reads the memmap; augmented batches come from it alike."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(DIGITS.read_text().replace("{type: builtin, name: digits}", "{type: folder, path: digits}"))
    shutil.copytree(digits_folder, tmp_path / "digits")
    spec = load_spec(spec_file, overrides=["input.size=[8, 8]", "training.epochs=2", "data.cache=disk"])
    first = train(spec, out=tmp_path / "a", export=False, **QUIET)
    messages: list[str] = []
    second = train(spec, out=tmp_path / "b", export=False, progress=False, log=messages.append)
    assert any("from the disk cache" in m for m in messages)
    strip = lambda hs: [{k: v for k, v in h.items() if k not in ("time_s", "images_per_s")} for h in hs]  # noqa: E731
    assert strip(first.history()) == strip(second.history())


def test_cli_train_with_set_and_no_traceback_on_bad_override(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "convspec.compiler",
        "train",
        str(DIGITS),
        "--out",
        str(tmp_path),
        "--no-export",
        "--set",
        "input.size=[8, 8]",
        "--set",
        "training.epochs=1",
        "--set",
        "model.layers.2.filters=16",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "digits-cnn" / "best.pt").exists()
    bad = subprocess.run(
        cmd[:-2] + ["--set", "training.epochs=-1"], capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode == 1
    assert "training.epochs" in bad.stderr and "greater than 0" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_ctrl_c_saves_last_and_exits_cleanly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "convspec.compiler",
        "train",
        str(DIGITS),
        "--out",
        str(tmp_path),
        "--no-export",
        "--set",
        "training.epochs=200",
    ]
    # Why preexec_fn: a shell that starts jobs in the background (nohup, CI runners, `cmd &`)
    # starts children with SIGINT ignored, and the child would inherit that; the test sends
    # SIGINT, so it sets the child's handling itself (Python then turns SIGINT into Ctrl-C).
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    metrics = tmp_path / "digits-cnn" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    state = checkpoint.load(tmp_path / "digits-cnn" / "last.pt")
    assert state["epoch"] >= 1 and len(state["history"]) == state["epoch"]
    assert json.loads(metrics.read_text().splitlines()[-1])["epoch"] == state["epoch"]


def test_normalize_auto_takes_mean_and_std_from_the_training_split(tmp_path):
    import numpy as np

    from convspec.compiler.data.loading import load_dataset

    spec = small_digits("training.epochs=1", "preprocess=[{type: normalize, mean: auto}]")
    run = train(spec, out=tmp_path, export=False, **QUIET)
    state = checkpoint.load(run.last)["model"]
    [mean_key] = [k for k in state if k.endswith("mean") and k.startswith("preprocess")]
    data = load_dataset(spec, split_file=str(run.split), log=lambda _m: None)
    x = data.images[data.splits["train"]].astype(np.float64) / 255
    assert np.allclose(state[mean_key].flatten().numpy(), x.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(state[mean_key.replace("mean", "std")].flatten().numpy(), x.std(axis=(0, 2, 3)), atol=1e-6)
    # The statistics are readable without the weights: results.json and the report carry them
    results = json.loads(run.results.read_text())
    assert results["normalize"][0]["preprocess"] == 0
    assert np.allclose(results["normalize"][0]["mean"], x.mean(axis=(0, 2, 3)), atol=1e-6)
    assert "mean: auto from the training split: mean [" in run.report.read_text()


def test_ctrl_c_while_finishing_says_how_to_finish(tmp_path, monkeypatch):
    """Ctrl-C during the test, plots or export: a bare "interrupted" before; now the hint, and the
    hinted --resume completes the run (results and report written, no epoch trained again)."""
    from convspec.compiler.training import loop
    from convspec.compiler.training.loop import TrainingInterrupted

    def ctrl_c(*_a, **_k):
        raise KeyboardInterrupt

    real = loop.finish
    monkeypatch.setattr(loop, "finish", ctrl_c)
    with pytest.raises(TrainingInterrupted, match=r"holds all 1 epochs\. Finish with: convspec train --resume "):
        train(small_digits("training.epochs=1"), out=tmp_path, export=False, **QUIET)
    run = tmp_path / "digits-cnn"
    assert not (run / "results.json").exists()
    monkeypatch.setattr(loop, "finish", real)
    done = train(resume=run, export=False, **QUIET)
    assert done.read_results()["epochs_run"] == 1 and (run / "report.md").exists()


def test_a_spec_object_is_checked_again_and_takes_overrides(tmp_path):
    """``model_copy(update=...)`` does not validate: epochs 0 trained nothing and "succeeded", "2"
    was a TypeError after the run folder existed, a name "../x" wrote outside ``out``. Overrides
    given with a Spec object were dropped; with a file they applied."""
    from convspec.specs import SpecError

    spec = small_digits()
    for update, message in (
        ({"epochs": 0}, "training.epochs: must be greater than 0 (got 0)"),
        ({"epochs": "2"}, "training.epochs: must be an integer (got '2')"),
    ):
        bad = spec.model_copy(update={"training": spec.training.model_copy(update=update)})
        with pytest.raises(SpecError, match=re.escape(message)):
            train(bad, out=tmp_path / "runs", export=False, **QUIET)
    with pytest.raises(SpecError, match=r"name: must match"):
        train(spec.model_copy(update={"name": "../escaped"}), out=tmp_path / "runs", export=False, **QUIET)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escaped").exists()

    run = train(spec, out=tmp_path / "runs", overrides=["training.epochs=1"], export=False, **QUIET)
    assert [h["epoch"] for h in run.history()] == [1]
    with pytest.raises(ConvspecError, match=r"device: expected auto, cpu, cuda or cuda:N, as training.device \(got 0"):
        train(spec, out=tmp_path / "runs", device=0, export=False, **QUIET)


def test_train_leaves_the_callers_global_torch_generator_as_it_was(tmp_path):
    """train() seeds torch's global generator (init, dropout); a notebook's own seed outlived it not."""
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    train(small_digits("training.epochs=1"), out=tmp_path, export=False, **QUIET)
    assert torch.equal(torch.rand(3), expected) and torch.initial_seed() == 1234
