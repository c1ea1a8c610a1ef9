"""DDP under torchrun (gloo on CPU): ``convspec train --nproc 2`` trains one model, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DIGITS = REPO / "examples" / "digits.yaml"
EPOCHS = 20  # enough for >= 98 % test accuracy on digits (measured: 98.33 %)


def test_nproc_launches_torchrun_without_nproc(monkeypatch):
    from convspec.compiler.training import launch

    calls = []
    monkeypatch.setattr(launch.subprocess, "call", lambda cmd, **_kw: calls.append(cmd) or 0)
    argv = ["train", "spec.yaml", "--nproc", "2", "--set", "training.epochs=3", "--nproc=2"]
    assert launch.launch_torchrun(2, argv) == 0
    assert calls == [
        [
            sys.executable,
            "-c",
            launch._QUIET_TORCHRUN,  # torch.distributed.run's run(), without its traceback on failure
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "convspec.compiler",
            "train",
            "spec.yaml",
            "--set",
            "training.epochs=3",
        ]
    ]


def convspec(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONVSPEC_CACHE": str(cwd / "cache")}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "convspec.compiler", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_train_nproc_2_then_resume(tmp_path):
    out = tmp_path / "runs"
    proc = convspec(
        "train", str(DIGITS), "--out", str(out), "--nproc", "2", "--set", f"training.epochs={EPOCHS}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    runs = [p for p in out.iterdir() if p.is_dir()]
    assert [p.name for p in runs] == ["digits-cnn"], "rank 0 alone creates the run folder"
    run = runs[0]
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2  # it really ran under torchrun
    assert results["test"]["metrics"]["accuracy"] >= 0.98
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1)), "one line per epoch, not one per rank"
    assert (run / "model.onnx").is_file()
    export = json.loads((run / "export.json").read_text())
    assert export["top1_agreement"] == 1.0
    logs = proc.stdout + proc.stderr
    assert logs.count("done in ") == 1, "only rank 0 speaks"

    # Resume under DDP: one more epoch, appended to the same run.
    proc = convspec(
        "train",
        str(DIGITS),
        "--resume",
        str(run),
        "--nproc",
        "2",
        "--set",
        f"training.epochs={EPOCHS + 1}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["digits-cnn"]
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 2))
    assert json.loads((run / "results.json").read_text())["epochs_run"] == EPOCHS + 1


def _sync_worker(rank: int, init_file: str, result_file: str) -> None:
    import torch
    import torch.distributed as dist

    from convspec.compiler.training import distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    bn = torch.nn.BatchNorm2d(3)
    bn.running_mean.fill_(float(rank + 1))  # as after each rank's own last training step
    bn.num_batches_tracked.fill_(10 + rank)
    distributed.sync_buffers(distributed.Dist(rank, 2, rank), bn)
    Path(f"{result_file}.{rank}").write_text(json.dumps([bn.running_mean.tolist(), int(bn.num_batches_tracked)]))
    dist.destroy_process_group()


def test_sync_buffers_gives_every_rank_rank0s_batch_norm_stats(tmp_path):
    """Regression: ranks evaluated with their own BN stats, so val metrics (and with them plateau,
    best checkpoint and early stopping) differed between ranks."""
    import torch.multiprocessing as mp

    mp.spawn(_sync_worker, args=(str(tmp_path / "init"), str(tmp_path / "r")), nprocs=2, join=True)
    for rank in range(2):
        assert json.loads((tmp_path / f"r.{rank}").read_text()) == [[1.0, 1.0, 1.0], 10]
