"""One metric, one number: results.json, ``convspec evaluate RUN`` and Predictor-based evaluation agree.

Trains a binary run (digits 3 vs 8), a 10-class digits run and a 4-class folder run whose test
split lacks one class, then scores each exported model three ways.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convspec.compiler.data.loading import load_dataset
from convspec.compiler.training.loop import train
from convspec.runtime import Predictor
from convspec.runtime.evaluate import evaluate_arrays
from convspec.specs import load_spec, load_spec_text

REPO = Path(__file__).resolve().parents[3]


def digits_uint8():
    """scikit-learn's digits as uint8 ``(1797, 8, 8)`` (x 255 / 16, rounded) and targets (as tests/conftest.py)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * 255.0 / 16.0).astype(np.uint8), d.target


QUIET = {"progress": False, "log": lambda _m: None}
KEYS = ("accuracy", "precision", "recall", "f1", "auc")
METRICS = "training.metrics=[accuracy, precision, recall, f1, auc]"


def _cli_evaluate(model: Path, data: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "convspec.compiler", "evaluate", str(model), str(data), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _assert_same(expected: dict, got: dict, keys=KEYS) -> None:
    for k in keys:
        assert got[k] == pytest.approx(expected[k], abs=1e-6), k


def _strict(word: str):
    raise ValueError(f"{word} is not JSON (RFC 8259): strict readers such as JavaScript's refuse it")


def _check_run(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text(), parse_constant=_strict)
    test = results["test"]["metrics"]
    cli = _cli_evaluate(run / "model.onnx", run)
    _assert_same(test, cli)
    assert cli["ece"] == pytest.approx(test["ece"], abs=1e-5)  # ECE bins confidences: ORT vs torch float noise
    # Predictor on the run's test images
    spec = load_spec_text((run / "spec.yaml").read_text(), "spec.yaml")
    data = load_dataset(spec, split_file=run / "split.json", log=lambda _m: None)
    images, labels = data.arrays("test")
    r = evaluate_arrays(Predictor(run / "model.onnx", providers="cpu"), images, labels)
    _assert_same(test, r.metrics)
    # the model's metadata carries the same test metrics
    assert Predictor(run / "model.onnx").info.test_metrics["f1"] == pytest.approx(test["f1"])
    # per-class scores agree too
    for name, c in results["test"]["per_class"]["classes"].items():
        for k in ("precision", "recall", "f1", "support"):
            assert cli["per_class"][name][k] == pytest.approx(c[k], abs=1e-6), (name, k)
    return results


@pytest.mark.slow
def test_binary_run_one_f1_everywhere(tmp_path):
    spec = load_spec(REPO / "examples" / "digits-binary.yaml", overrides=["training.epochs=1", METRICS])
    run = train(spec, out=tmp_path, **QUIET).path
    results = _check_run(run)
    test = results["test"]["metrics"]
    assert 0 < test["f1"] <= 1 and 0.5 < test["auc"] <= 1


@pytest.mark.slow
def test_multiclass_run_one_f1_everywhere(tmp_path):
    spec = load_spec(REPO / "examples" / "digits.yaml", overrides=["training.epochs=1", "input.size=[8, 8]", METRICS])
    run = train(spec, out=tmp_path, **QUIET).path
    _check_run(run)


@pytest.mark.slow
def test_multiclass_with_a_class_absent_from_test(tmp_path):
    from convspec.compiler.data.split import make_split

    pixels, target = digits_uint8()
    root = tmp_path / "data"
    ids, labels = [], []
    for label, n in ((0, 30), (1, 30), (2, 30), (3, 2)):  # class 3: two images, too few to stratify
        (root / str(label)).mkdir(parents=True)
        for i in np.flatnonzero(target == label)[:n]:
            Image.fromarray(pixels[i]).save(root / str(label) / f"{i:04d}.png")
            ids.append(f"{label}/{i:04d}.png")
            labels.append(str(label))
    # a seed whose (unstratified) split keeps both images of class 3 out of the test split
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    seed = next(
        s
        for s in range(50)
        if "3" not in {labels[i] for i in make_split(ids, labels, **fractions, seed=s, log=lambda _m: None)["test"]}
    )
    spec_file = tmp_path / "four.yaml"
    spec_file.write_text(
        "version: 1\nname: four\ntask: multiclass\n"
        f"data: {{source: {{type: folder, path: data}}, split: {{train: 0.7, val: 0.15, test: 0.15, seed: {seed}}}}}\n"
        "input: {channels: 1, size: [8, 8]}\n"
        "model: {layers: [{type: conv, filters: 16, kernel: 3, activation: relu}, {type: global_avg_pool}]}\n"
        "training: {epochs: 4, batch_size: 16, optimizer: {type: adamw, lr: 0.01}, "
        "metrics: [accuracy, precision, recall, f1, auc]}\n"
    )
    run = train(load_spec(spec_file), out=tmp_path / "runs", **QUIET).path
    results = _check_run(run)
    assert results["test"]["per_class"]["classes"]["3"]["support"] == 0
    assert results["test"]["per_class"]["classes"]["3"]["auc"] is None  # undefined: null, as evaluate's JSON
    assert "No test images of 3: its precision, recall and F1 count as 0" in (run / "report.md").read_text()
    # every declared class counts in the macro means: recall of the absent class is 0
    recalls = [c["recall"] for c in results["test"]["per_class"]["classes"].values()]
    assert len(recalls) == 4 and results["test"]["metrics"]["recall"] == pytest.approx(np.mean(recalls))


def test_results_name_the_test_mistakes_by_file(tmp_path):
    """errors.png shows the worst mistakes; results.json and report.md name their files, so a
    reviewer can open them: each listed file is in the test split, with its true label, and the
    listed prediction is what the model says for it."""
    from convspec.runtime import Predictor

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text((REPO / "examples" / "digits.yaml").read_text())
    run = train(load_spec(spec_file, overrides=["training.epochs=1"]), out=tmp_path / "runs", **QUIET).path
    results = json.loads((run / "results.json").read_text())
    mistakes = results["test"]["mistakes"]
    split = json.loads((run / "split.json").read_text())["splits"]["test"]
    truth = dict(zip(split["files"], split["labels"], strict=True))
    confusion = np.array(results["test"]["per_class"]["confusion"])
    assert len(mistakes) == min(100, int(confusion.sum() - np.trace(confusion))) > 0
    assert all(truth[m["file"]] == m["true"] != m["predicted"] for m in mistakes)
    probs = [m["probability"] for m in mistakes]
    assert probs == sorted(probs, reverse=True)
    data = load_dataset(load_spec(spec_file), split_file=run / "split.json", log=lambda _m: None)
    ids = data.file_ids()
    first = mistakes[0]
    row = data.images[ids.index(first["file"])][None]
    pred = Predictor(run / "model.onnx").predict_arrays(row)[0]
    assert data.class_names[int(pred.argmax())] == first["predicted"]
    assert float(pred.max()) == pytest.approx(first["probability"], abs=1e-4)
    assert f"`{first['file']}`" in (run / "report.md").read_text()
