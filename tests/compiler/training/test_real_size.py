"""Real-size paths on CPU: a data set over the memory limit trains from the disk memmap; ``compile: true``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from convspec.compiler.data import decoding
from convspec.compiler.data.cache import CachedImages
from convspec.compiler.training.loop import train
from convspec.specs import load_spec

REPO = Path(__file__).resolve().parents[3]
QUIET = {"progress": False, "log": lambda _m: None}


def folder_spec(root: Path, cache: str, *extra: str):
    return load_spec(
        REPO / "examples" / "digits.yaml",
        overrides=[
            "data.source={type: folder, path: " + str(root) + "}",
            f"data.cache={cache}",
            "input.size=[8, 8]",
            "training.epochs=1",
            "model.layers.2.filters=8",
            *extra,
        ],
    )


def test_a_data_set_twice_the_memory_limit_trains_from_the_disk_memmap(tmp_path, monkeypatch, digits_folder):
    """``cache: auto`` with the limit forced to half the data: decoded into a memmap, trained from it."""
    n = sum(1 for _ in digits_folder.rglob("*.png"))
    monkeypatch.setattr(decoding, "AUTO_MEMORY_LIMIT", n * 8 * 8 // 2)
    monkeypatch.setenv("CONVSPEC_CACHE", str(tmp_path / "cache"))
    seen = []
    real = CachedImages.__init__
    monkeypatch.setattr(CachedImages, "__init__", lambda self, a: (seen.append(type(a)), real(self, a))[1])
    run = train(folder_spec(digits_folder, "auto"), out=tmp_path / "runs", export=False, **QUIET)
    assert seen == [np.memmap]  # trained from the memmap, never loaded into RAM
    assert list((tmp_path / "cache" / "images").glob("*.npy"))
    assert run.history()[0]["train_loss"] > 0 and "accuracy" in run.read_results()["test"]["metrics"]


def test_cached_images_take_equals_indexing_for_ram_and_memmap(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (9, 3, 4, 5), dtype=np.uint8)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=a.shape)
    mm[:] = a
    mm.flush()
    idx = torch.tensor([4, 0, 8, 4])
    for cache in (CachedImages(a), CachedImages(np.load(tmp_path / "x.npy", mmap_mode="r"))):
        assert torch.equal(cache.take(idx), torch.from_numpy(a[idx.numpy()]))
        assert torch.equal(cache[idx], torch.from_numpy(a[idx.numpy()]))


@pytest.mark.slow
def test_training_compile_true_runs_one_epoch_on_cpu(tmp_path):
    """``training.compile: true`` (torch.compile, inductor on CPU): a tiny 1-epoch run trains and tests."""
    spec = load_spec(
        REPO / "examples" / "digits.yaml",
        overrides=["input.size=[8, 8]", "training.epochs=1", "model.layers.2.filters=8", "training.compile=true"],
    )
    run = train(spec, out=tmp_path, export=False, **QUIET)
    assert np.isfinite(run.history()[0]["train_loss"])
    assert run.read_results()["test"]["metrics"]["accuracy"] > 0.2
