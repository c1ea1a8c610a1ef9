"""K-fold cross-validation: five folds of digits, the same test split in each, cv.json with mean +- std."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from convspec.compiler.data.loading import load_dataset
from convspec.compiler.training.folds import fold_splits
from convspec.specs import ConvspecError, load_spec

REPO = Path(__file__).resolve().parents[3]


def test_fold_splits_keep_test_fixed_and_rotate_validation():
    spec = load_spec(REPO / "examples" / "digits.yaml")
    data = load_dataset(spec, log=lambda _m: None)
    splits = fold_splits(data, 5, seed=0)
    assert len(splits) == 5
    pool = np.concatenate([data.splits["train"], data.splits["val"]])
    vals = np.concatenate([s["val"] for s in splits])
    assert sorted(vals) == sorted(pool), "every non-test image validates exactly once"
    for s in splits:
        assert np.array_equal(s["test"], data.splits["test"])
        assert not set(s["train"]) & set(s["val"]) and not set(s["train"]) & set(s["test"])
        assert len(np.unique(data.labels[s["val"]])) == 10  # stratified
    assert splits[0]["val"].tolist() != fold_splits(data, 5, seed=1)[0]["val"].tolist()
    with pytest.raises(ConvspecError, match="--folds 2000"):
        fold_splits(data, 2000, seed=0)


@pytest.mark.slow
def test_train_folds_cli_writes_five_folds_and_cv_json(tmp_path):
    from typer.testing import CliRunner

    from convspec.compiler.cli import app

    result = CliRunner().invoke(
        app,
        ["train", str(REPO / "examples" / "digits.yaml"), "--folds", "5", "--out", str(tmp_path),
         "--set", "training.epochs=1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    parent = tmp_path / "digits-cnn"
    cv = json.loads((parent / "cv.json").read_text())
    assert cv["folds"] == 5 and cv["runs"] == [f"fold-{i}" for i in range(1, 6)]
    tests = []
    for i in range(1, 6):
        split = json.loads((parent / f"fold-{i}" / "split.json").read_text())
        tests.append(split["splits"]["test"]["files"])
    assert all(t == tests[0] for t in tests) and tests[0]
    acc = cv["test"]["accuracy"]
    per_fold = [json.loads((parent / f"fold-{i}" / "results.json").read_text())["test"]["metrics"]["accuracy"]
                for i in range(1, 6)]  # fmt: skip
    assert acc["values"] == per_fold
    assert acc["mean"] == pytest.approx(statistics.fmean(per_fold)) and acc["std"] == pytest.approx(
        statistics.stdev(per_fold)
    )
    assert (parent / "model.onnx").is_file() and (parent / f"fold-{cv['best_fold']}" / "model.onnx").is_file()
    assert "+-" in result.stderr


def test_train_folds_no_export_writes_no_model(tmp_path):
    """``--no-export`` ("Skip writing model.onnx") holds with ``--folds`` too."""
    from typer.testing import CliRunner

    from convspec.compiler.cli import app

    result = CliRunner().invoke(
        app,
        ["train", str(REPO / "examples" / "digits.yaml"), "--folds", "2", "--out", str(tmp_path),
         "--set", "training.epochs=1", "--no-export"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    parent = tmp_path / "digits-cnn"
    assert (parent / "cv.json").is_file() and not list(parent.rglob("*.onnx"))


def test_a_cv_folder_that_cannot_be_written_is_refused_before_the_data_and_leaves_nothing(tmp_path, monkeypatch):
    from convspec.compiler.run import folder
    from convspec.compiler.run.files import WriteError
    from convspec.compiler.training.folds import train_folds

    spec = load_spec(REPO / "examples" / "digits.yaml")
    (tmp_path / "a-file").write_text("x")
    lines: list[str] = []
    with pytest.raises(ConvspecError, match="a-file"):
        train_folds(spec, 2, tmp_path / "a-file", log=lines.append)
    assert not any(ln.startswith("data:") for ln in lines)  # refused before any image was decoded

    def full_disk(path):
        raise WriteError(f"{path}/.convspec-run: cannot write (no space left on device)")

    monkeypatch.setattr(folder, "mark_run_folder", full_disk)  # the disk fills up at the marker
    with pytest.raises(WriteError, match="no space left"):
        train_folds(spec, 2, tmp_path / "runs", log=lines.append)
    assert list((tmp_path / "runs").iterdir()) == []  # no empty run folder left behind


@pytest.mark.slow
def test_an_interrupted_cross_validation_continues_where_it_stopped(tmp_path):
    """Ctrl-C in fold 2 of 3: the hint names ``--folds 3 --resume``; that keeps fold 1 as it was,
    resumes fold 2 from its last.pt, trains fold 3 and writes cv.json. A wrong K is refused first."""
    from convspec.compiler.run import checkpoint
    from convspec.compiler.run.checkpoint import CheckpointError
    from convspec.compiler.training.errors import TrainingInterrupted
    from convspec.compiler.training.folds import train_folds

    spec = load_spec(REPO / "examples" / "digits.yaml", overrides=["training.epochs=2"])
    epochs_seen: list[int] = []

    def ctrl_c_in_fold_2(record):
        epochs_seen.append(record["epoch"])
        if len(epochs_seen) == 3:  # fold 1's two epochs, then fold 2's first
            raise KeyboardInterrupt

    quiet = dict(progress=False, export=False)
    with pytest.raises(TrainingInterrupted, match=r"fold 2 of 3.*--folds 3 --resume \S+ --no-export") as e:
        train_folds(spec, 3, tmp_path, log=lambda _m: None, on_epoch=ctrl_c_in_fold_2, **quiet)
    assert e.value.exit_code == 130
    parent = tmp_path / "digits-cnn"
    assert not (parent / "cv.json").exists() and not (parent / "fold-3").exists()
    assert checkpoint.load(parent / "fold-2" / "last.pt")["epoch"] == 1
    fold_1 = (parent / "fold-1" / "results.json").read_bytes()

    wrong = {4: "fold 1 of --folds 4", 2: "fold 1 of --folds 2", 1: "has fold-2, more than --folds 1"}
    for wrong_k, message in wrong.items():
        with pytest.raises(CheckpointError, match=message):
            train_folds(None, wrong_k, resume=parent, log=lambda _m: None, **quiet)
    assert checkpoint.load(parent / "fold-2" / "last.pt")["epoch"] == 1  # a refusal changes nothing

    (parent / "model.onnx").write_bytes(b"an earlier run's best fold")  # stale once fold 2 trains on
    lines: list[str] = []
    train_folds(None, 3, resume=parent, log=lines.append, **quiet)
    assert not (parent / "model.onnx").exists() and any("removed the stale" in ln for ln in lines)
    assert (parent / "fold-1" / "results.json").read_bytes() == fold_1  # finished: kept, not trained again
    assert any(ln.startswith("fold 1/3: finished before") for ln in lines)
    assert any(ln.startswith("resuming") and "fold-2 after epoch 1" in ln for ln in lines)
    cv = json.loads((parent / "cv.json").read_text())
    assert cv["runs"] == ["fold-1", "fold-2", "fold-3"]
    for i in (2, 3):
        history = [json.loads(line) for line in (parent / f"fold-{i}" / "metrics.jsonl").read_text().splitlines()]
        assert [h["epoch"] for h in history] == [1, 2]
    # the folds are exactly those of an uninterrupted run: fold i of 3 over the same data
    data = load_dataset(spec, log=lambda _m: None)
    for i, split in enumerate(fold_splits(data, 3, spec.data.split.seed), 1):
        saved = json.loads((parent / f"fold-{i}" / "split.json").read_text())["splits"]
        assert saved["val"]["files"] == [data.file_id(int(j)) for j in split["val"]]


def test_ctrl_c_while_exporting_the_best_fold_says_how_to_finish(tmp_path, monkeypatch):
    """Ctrl-C after the last fold, during the export: a bare "interrupted" before, and no cv.json."""
    from convspec.compiler.export import onnx as onnx_export
    from convspec.compiler.training.errors import TrainingInterrupted
    from convspec.compiler.training.folds import train_folds

    spec = load_spec(REPO / "examples" / "digits.yaml", overrides=["training.epochs=1"])
    quiet = dict(progress=False, log=lambda _m: None)
    parent = train_folds(spec, 2, tmp_path, export=False, **quiet)

    def ctrl_c(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "export_onnx", ctrl_c)
    with pytest.raises(TrainingInterrupted, match=rf"while exporting; .* --folds 2 --resume {parent}$"):
        train_folds(None, 2, resume=parent, **quiet)


def test_a_metric_missing_in_some_folds_is_averaged_over_the_others():
    """A test split of one class has no AUC (null): cv.json's statistics ended in a TypeError
    traceback, with no cv.json and no model.onnx written."""
    from convspec.compiler.training.folds import _mean_std

    got = _mean_std([0.9, None, float("nan"), 0.7])
    assert got["mean"] == pytest.approx(0.8) and got["std"] == pytest.approx(statistics.stdev([0.9, 0.7]))
    assert got["counted"] == 2 and got["values"][1] is None
    assert _mean_std([None, None]) == {"mean": None, "std": None, "values": [None, None], "counted": 0}
