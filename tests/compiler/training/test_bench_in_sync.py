"""The benchmarks time the loop's own functions, never a copy of them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_overhead_times_the_loops_train_epoch():
    from convspec.compiler.training import epoch, loop

    bench = load_bench("train_overhead")
    assert bench.train_epoch is loop.train_epoch is epoch.train_epoch
    assert bench.train_step is epoch.train_step
    assert bench.setup_training is loop.setup_training
