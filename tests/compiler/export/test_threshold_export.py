"""A binary run's operating threshold: chosen on validation, exported in the metadata, used by predict.

This is also the wiring the training loop needs: validation probabilities ->
``threshold_record(spec.export.threshold, ...)`` -> ``results.json["threshold"]`` -> export.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from PIL import Image

from convspec.compiler.data.loading import load_dataset
from convspec.compiler.export.onnx import export_onnx
from convspec.compiler.run.folder import Run
from convspec.compiler.training.loop import train
from convspec.runtime import Predictor
from convspec.runtime.threshold import threshold_record
from convspec.specs import load_spec

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_recall_threshold_reaches_metadata_and_predict(tmp_path):
    spec = load_spec(
        REPO / "examples" / "digits-binary.yaml", overrides=["training.epochs=1", "export.threshold={recall: 0.95}"]
    )
    run = train(spec, out=tmp_path, progress=False, log=lambda _m: None)
    data = load_dataset(spec, split_file=run.split, log=lambda _m: None)
    predictor = Predictor(run.onnx, providers="cpu")
    (xv, yv), (xt, yt) = data.arrays("val"), data.arrays("test")
    record = threshold_record(spec.export.threshold, yv, predictor.predict_arrays(xv), yt, predictor.predict_arrays(xt))
    results = run.read_results()
    results["threshold"] = record
    run.write_json(run.results, results)
    export_onnx(Run(run.path), log=lambda _m: None)

    props = {p.key: p.value for p in onnx.load(run.onnx).metadata_props}
    t = float(props["convspec.threshold"])
    assert t == pytest.approx(record["value"]) and record["validation"]["recall"] >= 0.95
    screen = Predictor(run.onnx, providers="cpu")
    assert screen.threshold == pytest.approx(t)
    p_val = screen.predict_arrays(xv)[:, 0]
    labels = screen.decide(screen.class_probabilities(p_val[:, None]))
    assert (labels[yv == 1] == 1).mean() >= 0.95  # validation recall at the stored threshold

    # convspec predict labels by the stored threshold
    folder = tmp_path / "val"
    folder.mkdir()
    for i, a in enumerate(xv):
        Image.fromarray(a[0]).save(folder / f"{i:03d}.png")
    out = subprocess.run(
        [sys.executable, "-m", "convspec.compiler", "predict", str(run.onnx), str(folder), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = {Path(p["source"]).name: p["label"] for p in json.loads(out.stdout)}
    want = {f"{i:03d}.png": data.class_names[int(p >= t)] for i, p in enumerate(p_val)}
    assert got == want


def _threshold_in(model: Path) -> float | None:
    props = {p.key: p.value for p in onnx.load(model).metadata_props}
    return float(props["convspec.threshold"]) if "convspec.threshold" in props else None


@pytest.mark.slow
def test_export_of_a_run_without_results_keeps_the_specs_threshold(tmp_path):
    """A run stopped before its test (Ctrl-C: best.pt, no results.json), then ``convspec export``:
    the model labelled at 0.5 whatever ``export.threshold`` said. A number is now written as it is;
    a rule is chosen on the run's validation split, the value training would have chosen."""
    spec = load_spec(
        REPO / "examples" / "digits-binary.yaml", overrides=["training.epochs=1", "export.threshold={metric: f1}"]
    )
    quiet = dict(progress=False, log=lambda _m: None)
    run = train(spec.model_copy(update={"name": "rule"}), out=tmp_path, **quiet)
    trained = _threshold_in(run.onnx)
    assert trained == pytest.approx(run.read_results()["threshold"]["value"]) and trained != 0.5
    run.results.unlink()
    run.onnx.unlink()
    lines: list[str] = []
    export_onnx(run, log=lines.append)
    assert _threshold_in(run.onnx) == trained  # the same value, chosen on the same split from best.pt
    assert any("chosen on the validation split" in ln for ln in lines)

    at_03 = spec.export.model_copy(update={"threshold": 0.3})
    fixed = train(spec.model_copy(update={"name": "fixed", "export": at_03}), out=tmp_path, export=False, **quiet)
    fixed.results.unlink()
    export_onnx(fixed, log=lambda _m: None)
    assert _threshold_in(fixed.onnx) == 0.3


@pytest.mark.slow
def test_a_threshold_rule_is_chosen_without_a_test_split_and_refused_before_training_when_it_cannot_be(tmp_path):
    """No test split: the rule is still chosen (the model kept 0.5). A validation split of one class:
    refused before the first epoch, with no run folder (it failed after training, leaving one)."""
    spec = load_spec(
        REPO / "examples" / "digits-binary.yaml",
        overrides=[
            "training.epochs=1",
            "data.split={train: 0.8, val: 0.2, test: 0.0}",
            "export.threshold={metric: f1}",
        ],
    )
    run = train(spec, out=tmp_path / "a", progress=False, log=lambda _m: None)
    record = run.read_results()["threshold"]
    assert "validation" in record and "test" not in record and record["value"] != 0.5
    assert _threshold_in(run.onnx) == record["value"]
    # exported again without results.json: the same value to the bit (it differed by 3e-8, as
    # PyTorch batched the validation images otherwise), a short decimal of the gap
    run.results.unlink()
    run.onnx.unlink()
    export_onnx(run, log=lambda _m: None)
    assert _threshold_in(run.onnx) == record["value"] and len(repr(record["value"])) < 12

    from convspec.runtime.threshold import ThresholdError

    lonely = load_spec(
        REPO / "examples" / "digits-binary.yaml",
        overrides=["training.epochs=1", "export.threshold={recall: 0.9}"],
    )
    epochs: list[int] = []
    data = load_dataset(lonely, log=lambda _m: None)
    one_class = data.splits["val"][data.labels[data.splits["val"]] == 0]
    data.splits = {**data.splits, "val": one_class}
    with pytest.raises(ThresholdError, match="needs images of both classes"):
        train(lonely, out=tmp_path / "b", dataset=data, on_epoch=epochs.append, progress=False, log=lambda _m: None)
    assert epochs == [] and not (tmp_path / "b").exists()
