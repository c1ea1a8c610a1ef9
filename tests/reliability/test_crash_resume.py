"""Crash consistency: SIGKILL ``convspec train`` anywhere; nothing is half-written, and resuming ends
exactly where an uninterrupted run ends.

A small digits run (tests/reliability/digits.yaml with 4 epochs, 8 filters, CPU) is killed at five points by
``kill_harness.py``: mid-epoch 1 (only the epoch-0 checkpoint exists), mid-epoch 3, inside
the write of epoch 2's ``last.pt``, inside a ``best.pt`` write, and inside the write of
``model.onnx`` during export. After each kill every artifact present must load; then
``convspec train --resume RUN`` must finish, and its test metrics, its whole
``metrics.jsonl`` (timings aside), its best weights and its ONNX model's outputs must equal
the uninterrupted reference run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("kill_harness.py")
SPEC = Path(__file__).with_name("digits.yaml")  # frozen copy of examples/digits.yaml
SETS = ["training.epochs=4", "model.layers.0.filters=8", "model.layers.2.layers.0.filters=8"]
NAME = "digits-cnn"
TIMING_KEYS = {"time_s", "images_per_s"}
# 1,437 training images / batch 64 = 23 steps per epoch.
KILL_POINTS = {
    "mid-epoch-1": "step:12",
    "mid-epoch-3": "step:58",
    "inside-last.pt-write-epoch-2": "write:last.pt:3",  # writes: epoch 0 (before training), 1, 2
    "inside-best.pt-write": "write:best.pt:2",
    "inside-model.onnx-write": "write:model.onnx:1",
}


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def train_under(point: str, out: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``convspec train`` of the small digits spec under the harness, killed at ``point``."""
    args = ["train", str(SPEC), "--out", str(out), "--device", "cpu"]
    for s in SETS:
        args += ["--set", s]
    return subprocess.run(
        [sys.executable, str(HARNESS), point, "--", *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
        cwd=out.parent,
    )


def resume(run: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convspec.compiler", "train", "--resume", str(run), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
        cwd=run.parent,
    )


def check_nothing_half_written(run: Path) -> list[str]:
    """Every artifact present loads; returns the names present."""
    import onnx

    from convspec.compiler.run import checkpoint

    present = sorted(p.name for p in run.iterdir())
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            state = checkpoint.load(run / name)  # raises CheckpointError on a torn file
            assert state["model"], name
    if (run / "model.onnx").exists():
        onnx.checker.check_model(onnx.load(str(run / "model.onnx")))
    for name in ("results.json", "split.json", "export.json"):
        if (run / name).exists():
            json.loads((run / name).read_text("utf-8"))
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text("utf-8").splitlines():
            json.loads(line)
    leftovers = [n for n in present if n.endswith(".tmp")]
    assert all(n.startswith(".") for n in leftovers), leftovers  # only hidden temp names, never a target
    return present


def history(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text("utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def outcome(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text("utf-8"))
    return {
        "test": results["test"]["loss"],
        "metrics": results["test"]["metrics"],
        "best_epoch": results["best_epoch"],
        "epochs_run": results["epochs_run"],
        "history": history(run),
    }


def assert_same_weights(a: Path, b: Path) -> None:
    import torch

    from convspec.compiler.run import checkpoint

    wa, wb = checkpoint.load(a)["model"], checkpoint.load(b)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{a.name}: {key} differs"


def onnx_outputs(model: Path) -> np.ndarray:
    """ONNX Runtime's probabilities for 64 digits."""
    from sklearn.datasets import load_digits

    from convspec.runtime import Predictor

    pixels = np.rint(load_digits().images[:64] * 255 / 16).astype(np.uint8)
    preds = Predictor(model, providers="cpu").predict(list(pixels))
    return np.array([list(p.probabilities.values()) for p in preds])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run, through the same harness entry point (computed once)."""
    out = tmp_path_factory.mktemp("reference")
    done = train_under("none", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / NAME


@pytest.mark.slow
@pytest.mark.parametrize("where", list(KILL_POINTS))
def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(where, reference, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    killed = train_under(KILL_POINTS[where], out)
    assert killed.returncode == -signal.SIGKILL, f"not killed at {where}:\n{killed.stderr[-3000:]}"
    run = out / NAME
    present = check_nothing_half_written(run)
    assert "last.pt" in present
    if where.startswith("inside-") and where != "inside-model.onnx-write":
        target = where.split("-")[1]
        assert any(n.startswith(f".{target}.") and n.endswith(".tmp") for n in present), (
            present
        )  # torn temp file was there

    done = resume(run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    check_nothing_half_written(run)
    assert outcome(run) == outcome(reference)
    assert_same_weights(run / "best.pt", reference / "best.pt")
    assert_same_weights(run / "last.pt", reference / "last.pt")
    assert np.array_equal(onnx_outputs(run / "model.onnx"), onnx_outputs(reference / "model.onnx"))
