"""``convspec predict``, ``evaluate`` and ``export``: output formats, exit codes, clear errors.

Fast tests use a hand-written "band" model (class j = brightest band of rows j); the slow
ones use a 3-epoch digits run (shared by this session's deploy tests).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convspec.compiler.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def model(tmp_path, band):
    return band.model(tmp_path / "band.onnx")


@pytest.fixture
def folder(tmp_path, band):
    """data/<class>/<i>.png (nested one level deeper for class c), labels = folder names."""
    root = tmp_path / "data"
    band.save(root / "a" / "0.png", 0)
    band.save(root / "a" / "1.png", 0)
    band.save(root / "b" / "0.png", 1)
    band.save(root / "c" / "deep" / "0.png", 2)
    return root


def no_traceback(result) -> None:
    assert "Traceback" not in result.output and "Traceback" not in result.stderr


def test_predict_table(model, folder):
    result = invoke("predict", model, folder, "--top-k", "2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "4 images" in out and "next 1" in out
    assert result.stderr == ""


def test_predict_json(model, folder):
    result = invoke("predict", model, folder, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    got = {Path(r["source"]).relative_to(folder).as_posix(): r["label"] for r in rows}
    assert got == {"a/0.png": "a", "a/1.png": "a", "b/0.png": "b", "c/deep/0.png": "c"}
    assert all(len(r["top"]) == 1 and 0 < r["probability"] <= 1 for r in rows)


def test_predict_csv_top_k(model, folder):
    result = invoke("predict", model, folder / "b" / "0.png", "--format", "csv", "--top-k", "3")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["path", "label", "probability", "label_2", "probability_2", "label_3", "probability_3"]
    assert rows[1][1] == "b" and len(rows) == 2
    assert sum(float(v) for v in rows[1][2::2]) == pytest.approx(1.0, abs=1e-4)


def test_predict_unreadable_file_among_good_ones(model, folder):
    bad = folder / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    result = invoke("predict", model, folder, "--format", "json")
    assert result.exit_code == 1
    assert len(json.loads(result.stdout)) == 4  # the good ones are predicted
    assert f"{bad}: " in result.stderr and "1 input could not be predicted" in result.stderr
    no_traceback(result)


def test_predict_missing_image_and_empty_folder(model, folder, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    result = invoke("predict", model, tmp_path / "empty", tmp_path / "nope.png", folder / "a" / "0.png")
    assert result.exit_code == 1
    assert "no images in this folder" in result.stderr and "nope.png: file not found" in result.stderr
    assert "1 image:" in result.stdout and "0.png" in result.stdout
    no_traceback(result)


@pytest.mark.parametrize(
    "content, message",
    [
        ("truncate", "truncated or corrupt"),
        (b"definitely not a model\n" * 3, "not an ONNX model"),
    ],
)
def test_predict_bad_model(model, folder, content, message):
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2] if content == "truncate" else content)
    result = invoke("predict", model, folder)
    assert result.exit_code == 1
    assert message in result.stderr and str(model) in result.stderr
    no_traceback(result)


def test_predict_missing_model(tmp_path, folder):
    result = invoke("predict", tmp_path / "missing.onnx", folder)
    assert result.exit_code == 1 and "model file not found" in result.stderr
    no_traceback(result)


def test_evaluate_folder(model, folder):
    result = invoke("evaluate", model, folder)
    assert result.exit_code == 0, result.output
    assert "4 images, accuracy 100.00 %" in result.stdout
    assert "confusion" in result.stdout


def test_evaluate_a_folder_of_one_class_writes_n_a_for_its_auc(model, tmp_path, band):
    """AUC needs both a class and others: undefined, ``n/a`` in the table as ``null`` in the JSON."""
    band.save(tmp_path / "one" / "a" / "0.png", 0)
    band.save(tmp_path / "one" / "a" / "1.png", 0)
    result = invoke("evaluate", model, tmp_path / "one")
    assert result.exit_code == 0, result.output
    assert "AUC n/a" in result.stdout and "nan" not in result.stdout
    assert json.loads(invoke("evaluate", model, tmp_path / "one", "--format", "json").stdout)["auc"] is None


def test_evaluate_json_and_unknown_class(model, folder, band):
    result = invoke("evaluate", model, folder, "--format", "json")
    assert json.loads(result.stdout)["accuracy"] == 1.0
    band.save(folder / "zebra" / "0.png", 0)
    result = invoke("evaluate", model, folder)
    assert result.exit_code == 1 and "classes the model does not know: zebra" in result.stderr
    no_traceback(result)


def test_evaluate_run_folder_of_image_files(model, folder, tmp_path, band):
    """DATA = a run folder: its split.json's test files (relative to the data root) are scored."""
    run = tmp_path / "run"
    run.mkdir()
    split = {
        "version": 1,
        "root": str(folder),
        "class_names": list(band.CLASSES),
        "splits": {
            "train": {"files": ["a/0.png"], "labels": ["a"]},
            "val": {"files": [], "labels": []},
            "test": {"files": ["a/1.png", "b/0.png", "c/deep/0.png"], "labels": ["a", "b", "a"]},
        },
    }
    (run / "split.json").write_text(json.dumps(split))
    result = invoke("evaluate", model, run, "--format", "json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["images"] == 3 and got["accuracy"] == pytest.approx(2 / 3)
    # a test image gone since: refused, never scored as the run's split on fewer images
    split["splits"]["test"]["files"][1] = "b/moved.png"
    (run / "split.json").write_text(json.dumps(split))
    result = invoke("evaluate", model, run)
    assert result.exit_code == 1 and "1 of the run's 3 test images are gone" in result.stderr, result.output
    assert "b/moved.png" in result.stderr
    no_traceback(result)
    os.symlink(folder / "nowhere.png", folder / "b" / "moved.png")  # a broken link in its place: gone too
    result = invoke("evaluate", model, run)
    assert result.exit_code == 1 and "test images are gone" in result.stderr, result.output
    os.unlink(folder / "b" / "moved.png")
    split["splits"]["test"] = {"files": [], "labels": []}
    (run / "split.json").write_text(json.dumps(split))
    result = invoke("evaluate", model, run)
    assert result.exit_code == 1 and "no test split" in result.stderr


def test_export_needs_a_run(tmp_path):
    result = invoke("export", tmp_path / "nope")
    assert result.exit_code == 1 and "run folder not found" in result.stderr
    no_traceback(result)


# Why a finder, not sys.modules["torch"] = None: any "import torch" raises ImportError as if torch
# were not installed, while "torch" stays out of sys.modules (scipy, under scikit-learn's metrics,
# reads sys.modules["torch"] when present and fails on a None there).
TORCH_FREE = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTorch())
from convspec.compiler.cli import main
sys.argv = ["convspec", *sys.argv[1:]]
try:
    main()
finally:
    assert "torch" not in sys.modules
"""


def test_predict_and_evaluate_do_not_import_torch(model, folder):
    for args in (["predict", model, folder, "--format", "json"], ["evaluate", model, folder]):
        proc = subprocess.run(
            [sys.executable, "-c", TORCH_FREE, *map(str, args)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ a trained run (slow)


@pytest.mark.slow
def test_evaluate_run_folder_matches_training_test_accuracy(digits_run):
    result = invoke("evaluate", digits_run / "model.onnx", digits_run, "--format", "json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    results = json.loads((digits_run / "results.json").read_text())
    assert got["images"] == sum(results["counts"]["test"].values())
    assert got["accuracy"] == pytest.approx(results["test"]["metrics"]["accuracy"])
    # A run folder works as MODEL too.
    assert invoke("evaluate", digits_run, digits_run).exit_code == 0


@pytest.mark.slow
def test_export_command(digits_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    (run / "model.onnx").unlink()
    result = invoke("export", run, "--int8")
    assert result.exit_code == 0, result.output
    assert (run / "model.onnx").exists() and (run / "model.int8.onnx").exists()
    assert "top-1 agreement 100.00 %" in result.stderr and "model.int8.onnx" in result.stderr
    assert "[torch.onnx]" not in result.output + result.stderr


@pytest.mark.slow
def test_predict_digit_png(digits_run, tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    Image.fromarray(np.rint(d.images[0] * 255 / 16).astype(np.uint8)).save(tmp_path / "zero.png")
    result = invoke("predict", digits_run / "model.onnx", tmp_path / "zero.png", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["label"] in [str(i) for i in range(10)]
