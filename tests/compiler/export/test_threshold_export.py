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
