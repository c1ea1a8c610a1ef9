"""``export_onnx``: model.onnx from a trained run, metadata, parity with PyTorch, INT8, failures.

One 3-epoch digits run is trained per session (about half a minute on two cores) and
exported by ``train`` itself; the tests that change a run work on a copy of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


def test_model_passes_checker_and_takes_uint8_nchw(digits_run):
    model = onnx.load(digits_run / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    [inp] = model.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 12, 12]  # dynamic batch
    assert [o.name for o in model.graph.output] == ["probabilities"]
    assert model.opset_import[0].version == 18
    assert not (digits_run / "model.onnx.data").exists()  # one self-contained file


def test_metadata(digits_run):
    from convspec.specs import load_spec_text

    props = {p.key: p.value for p in onnx.load(digits_run / "model.onnx").metadata_props}
    assert json.loads(props["convspec.classes"]) == [str(i) for i in range(10)]
    assert props["convspec.task"] == "multiclass"
    assert props["convspec.channels"] == "1"
    assert json.loads(props["convspec.input_size"]) == [12, 12]
    assert props["convspec.resize"] == "stretch"
    assert props["convspec.layout"] == "NCHW uint8"
    assert props["convspec.version"]
    spec = load_spec_text(props["convspec.spec"], "metadata")
    assert spec.name == "digits-cnn" and spec.training.epochs == 3
    results = json.loads((digits_run / "results.json").read_text())
    assert json.loads(props["convspec.test_metrics"])["accuracy"] == pytest.approx(
        results["test"]["metrics"]["accuracy"]
    )


def test_parity_recorded(digits_run):
    info = json.loads((digits_run / "export.json").read_text())
    assert info["file"] == "model.onnx" and info["checkpoint"] == "best.pt"
    assert info["images"] >= 256
    assert info["top1_agreement"] == 1.0
    assert info["max_abs_diff"] <= 1e-4
    results = json.loads((digits_run / "results.json").read_text())
    assert results["export"]["max_abs_diff"] == info["max_abs_diff"]
    assert "## Export" in (digits_run / "report.md").read_text()


def test_onnx_agrees_with_pytorch(digits_run):
    """Recomputed here, independently of the exporter's own check."""
    import torch

    from convspec.compiler.model.builder import build_model
    from convspec.compiler.run import checkpoint
    from convspec.runtime import Predictor
    from convspec.specs import load_spec_text

    spec = load_spec_text((digits_run / "spec.yaml").read_text(), "spec.yaml")
    state = checkpoint.load(digits_run / "best.pt")
    model = build_model(spec, class_names=state["class_names"])
    model.load_state_dict(state["model"])
    model.eval()
    x = np.random.default_rng(0).integers(0, 256, (33, 1, 12, 12), dtype=np.uint8)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    got = Predictor(digits_run / "model.onnx").predict_arrays(x)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_lazy_api():
    import convspec.compiler
    from convspec.compiler.export.onnx import export_onnx

    assert convspec.compiler.export_onnx is export_onnx


def test_int8_export(run_copy, capfd):
    from convspec.compiler.export.onnx import export_onnx

    lines: list[str] = []
    path = export_onnx(run_copy, int8=True, log=lines.append)
    assert path == run_copy.onnx
    captured = capfd.readouterr()
    noise = captured.out + captured.err
    assert "[torch.onnx]" not in noise and "torchvision" not in noise and "Warning" not in noise
    assert run_copy.onnx_int8.exists()
    q = onnx.load(run_copy.onnx_int8)
    onnx.checker.check_model(q)
    assert "QuantizeLinear" in {n.op_type for n in q.graph.node}
    assert json.loads({p.key: p.value for p in q.metadata_props}["convspec.classes"])[0] == "0"
    info = json.loads(run_copy.export_json.read_text())["int8"]
    assert info["file"] == "model.int8.onnx" and info["split"] == "test"
    # The fixture is a 3-epoch model (~88 %), whose decision margins are thin: allow two of the
    # 180 test images to flip. The 0.5-pt bar is measured on the fully trained model in bench/infer.py.
    assert info["fp32_accuracy"] - info["accuracy"] <= 2 / 180 + 1e-9
    assert info["speedup"] > 0
    # Each model's metadata carries its own test metrics (serve's /metadata shows them)
    from convspec.runtime.metadata import read_metadata

    fp32_metrics = read_metadata(run_copy.onnx).test_metrics
    int8_metrics = read_metadata(run_copy.onnx_int8).test_metrics
    assert set(int8_metrics) == set(fp32_metrics) and int8_metrics["accuracy"] == pytest.approx(info["accuracy"])
    assert fp32_metrics["accuracy"] == pytest.approx(info["fp32_accuracy"], abs=1 / 180 + 1e-9)  # PyTorch vs ORT
    assert int8_metrics["ece"] != fp32_metrics["ece"]  # int8 probabilities, not a copy of fp32's numbers
    assert any("model.int8.onnx" in line for line in lines)
    assert "INT8" in run_copy.report.read_text()
    # A later export without INT8 (after more epochs, say) leaves no model.int8.onnx of older weights
    lines.clear()
    export_onnx(run_copy, int8=False, log=lines.append)
    assert not run_copy.onnx_int8.exists() and any("removed the stale model.int8.onnx" in ln for ln in lines)


def test_failed_parity_leaves_no_model(run_copy, monkeypatch):
    from convspec.compiler.export import onnx as export
    from convspec.compiler.export import parity

    monkeypatch.setattr(parity, "MAX_ABS_DIFF", -1.0)  # nothing can pass
    with pytest.raises(export.ExportError, match=r"does not match PyTorch.*model.onnx was not written"):
        export.export_onnx(run_copy, log=lambda _m: None)
    assert not run_copy.onnx.exists()
    assert not list(run_copy.path.glob(".model.onnx*"))  # no temporary left either


@pytest.mark.parametrize(
    "spec_file, overrides",
    [
        ("digits-binary.yaml", []),
        ("digits.yaml", ["export.dynamic_batch=false"]),
    ],
)
def test_binary_and_fixed_batch_models(tmp_path, spec_file, overrides):
    """A binary model's (N, 1) output becomes both classes; a fixed-batch model still predicts batches."""
    import torch

    from convspec.compiler.export.onnx import export_to_file
    from convspec.compiler.model.builder import build_model
    from convspec.runtime import Predictor
    from convspec.specs import load_spec

    spec = load_spec(REPO / "examples" / spec_file, overrides=overrides)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    p = Predictor(export_to_file(model, spec, tmp_path / "m.onnx"))
    x = np.random.default_rng(0).integers(0, 256, (5, *p.input_shape), dtype=np.uint8)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(p.predict_arrays(x), ref, atol=1e-5)
    preds = p.predict(list(x), top_k=3)
    if spec.task == "binary":
        assert p.classes == ["3", "8"] and ref.shape == (5, 1)
        for pred, r in zip(preds, ref[:, 0], strict=True):
            assert pred.probabilities == pytest.approx({"3": 1 - r, "8": r}, abs=1e-5)
            assert pred.label == ("8" if r >= 0.5 else "3") and len(pred.top) == 2
    else:
        assert p.session.get_inputs()[0].shape[0] == 1
        assert [q.label for q in preds] == [str(i) for i in ref.argmax(1)]


def test_missing_checkpoint(tmp_path):
    from convspec.compiler.export.onnx import ExportError, export_onnx

    with pytest.raises(ExportError, match="run folder not found"):
        export_onnx(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no best.pt or last.pt"):
        export_onnx(tmp_path / "empty")
