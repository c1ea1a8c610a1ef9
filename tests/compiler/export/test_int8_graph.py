"""``int8_graph``: the rewrites before INT8 quantization keep every output, and do what they say.

Each test exports a small model with random weights (its own spec), rewrites the
pre-processed graph, and compares ONNX Runtime's outputs before and after on random pixels.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from convspec.compiler.export.int8_graph import prepare_for_int8
from convspec.compiler.export.onnx import export_to_file
from convspec.compiler.export.quantize import quantize_int8
from convspec.compiler.model.builder import build_model
from convspec.specs import load_spec_text

pytestmark = pytest.mark.slow

SPEC = """
version: 1
name: small
task: multiclass
classes: 10
data: {{source: {{type: builtin, name: digits}}}}
input: {{channels: {channels}, size: [12, 12]}}
preprocess: [{{type: normalize, mean: [0.5], std: [0.5]}}]
model:
  layers:
{layers}
"""
STEM = """    - {type: conv, filters: 16, kernel: 3, activation: relu, batch_norm: true}
    - {type: max_pool, size: 2}
    - {type: conv, filters: 16, kernel: 3, activation: relu, batch_norm: true}
    - {type: flatten}
"""


def exported(tmp_path, layers: str, channels: int = 1) -> bytes:
    torch.manual_seed(0)
    text = SPEC.format(channels=channels, layers=layers)
    if channels != 1:
        text = text.replace("mean: [0.5], std: [0.5]", f"mean: {[0.5] * channels}, std: {[0.5] * channels}")
    spec = load_spec_text(text, "small.yaml")
    model = build_model(spec, num_classes=10, class_names=list("abcdefghij")).eval()
    for m in model.modules():  # BN statistics that are not the identity, so a wrong rewrite shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return export_to_file(model, spec, tmp_path / "m.onnx").read_bytes()


def pre_processed(blob: bytes, tmp_path) -> onnx.ModelProto:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, pre = tmp_path / "src.onnx", tmp_path / "pre.onnx"
    src.write_bytes(blob)
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
    return onnx.load(pre)


def outputs(model: onnx.ModelProto | bytes, x: np.ndarray) -> np.ndarray:
    blob = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


def pixels(channels: int = 1, n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, channels, 12, 12), dtype=np.uint8)


def test_rewrites_keep_the_outputs_and_reorder_relu_after_the_pool(tmp_path):
    blob = exported(tmp_path, STEM)
    model = pre_processed(blob, tmp_path)
    before = outputs(model, pixels())
    keep = prepare_for_int8(model)
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(outputs(model, pixels()), before, atol=1e-6)

    ops = [n.op_type for n in model.graph.node]
    # the stem (1 channel x 3x3 = 9 < 32) stays in float: conv, then pool, then relu
    by_name = {n.name: n.op_type for n in model.graph.node}
    assert [by_name[k] for k in keep] == ["Conv", "Relu", "MaxPool"]
    first_conv = ops.index("Conv")
    assert ops[first_conv + 1 : first_conv + 3] == ["MaxPool", "Relu"]
    # the second conv (16 x 3x3 = 144) is quantized, and the flatten is channels-last
    assert ops.count("Conv") == 2 and ops[ops.index("Reshape") - 1] == "Transpose"


def test_int8_model_keeps_the_stem_float_and_agrees_with_fp32(tmp_path):
    blob = exported(tmp_path, STEM)
    calib = pixels(n=128)
    q = onnx.load_from_string(quantize_int8(blob, calib))
    weight_of = {n.name: n.input[1] for n in q.graph.node if n.op_type == "Conv"}
    dequantized = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    stem, second = list(weight_of.values())
    assert stem not in dequantized and second in dequantized
    fp32, int8 = outputs(blob, pixels(n=256)), outputs(q, pixels(n=256))
    assert np.abs(fp32 - int8).max() < 0.1
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9


def test_rgb_stem_with_pooling_after_a_wide_conv_is_left_alone(tmp_path):
    """A 3-channel stem (27 < 32) stays float; a pool after a quantized conv is not reordered."""
    layers = """    - {type: conv, filters: 8, kernel: 3, activation: relu}
    - {type: conv, filters: 16, kernel: 3, activation: relu}
    - {type: max_pool, size: 2}
    - {type: global_avg_pool}
"""
    blob = exported(tmp_path, layers, channels=3)
    model = pre_processed(blob, tmp_path)
    before = outputs(model, pixels(3))
    keep = prepare_for_int8(model)
    np.testing.assert_allclose(outputs(model, pixels(3)), before, atol=1e-6)
    by_name = {n.name: n.op_type for n in model.graph.node}
    assert [by_name[k] for k in keep] == ["Conv", "Relu"]  # the stem; its consumer is a conv, not a pool
    ops = [n.op_type for n in model.graph.node]
    assert ops.index("MaxPool") > ops.index("Relu") and "Transpose" not in ops  # no flatten-before-dense here


def test_a_wide_first_conv_is_quantized(tmp_path):
    layers = """    - {type: conv, filters: 8, kernel: 7, activation: relu}
    - {type: flatten}
"""
    model = pre_processed(exported(tmp_path, layers), tmp_path)  # 1 x 7x7 = 49 >= 32
    assert prepare_for_int8(model) == []


@pytest.mark.parametrize("example", ["lenet5.yaml", "shapes.yaml", "digits.yaml"])
def test_rewrites_keep_the_outputs_of_the_examples(tmp_path, example):
    """The example architectures (tanh + average pools, repeat stages, flatten + dense), random weights."""
    from pathlib import Path

    from convspec.specs import load_spec

    spec = load_spec(Path(__file__).resolve().parents[3] / "examples" / example)
    torch.manual_seed(0)
    names = [str(i) for i in range(10)] if spec.task == "multiclass" else ["a", "b"]
    model = build_model(spec, num_classes=len(names), class_names=names).eval()
    blob = export_to_file(model, spec, tmp_path / "m.onnx", names).read_bytes()
    pre = pre_processed(blob, tmp_path)
    c, (h, w) = spec.input.channels, spec.input.size
    x = np.random.default_rng(0).integers(0, 256, (16, c, h, w), dtype=np.uint8)
    before = outputs(pre, x)
    prepare_for_int8(pre)
    onnx.checker.check_model(pre, full_check=True)
    np.testing.assert_allclose(outputs(pre, x), before, atol=1e-6)
    q = onnx.load_from_string(quantize_int8(blob, x))
    assert outputs(q, x).shape == before.shape
