"""The export-time fold of the input affine into the first conv: equal outputs, fewer ops.

Each case builds a model, gives its BatchNorms non-trivial statistics, and compares the folded
copy with the model on real photographs (scikit-image's), in PyTorch and through ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from convspec.compiler.export.fold import AffineStep, FoldedStem, fold_for_export
from convspec.compiler.export.onnx import _export_proto
from convspec.compiler.export.parity import ort_probabilities
from convspec.compiler.model.builder import build_model
from convspec.specs import spec_from_dict

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:.*has no convspec metadata")


def photos(size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """Crops of real photographs as uint8 ``(4, C, H, W)``."""
    out = []
    for img in (skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()):
        im = Image.fromarray(img).convert("RGB" if channels == 3 else "L").resize(size[::-1])
        a = np.asarray(im)
        out.append(a.transpose(2, 0, 1) if channels == 3 else a[None])
    return np.stack(out)


def model_for(preprocess, first, *, size=(40, 36), channels=3, seed=0):
    spec = spec_from_dict(
        {
            "version": 1,
            "task": "multiclass",
            "classes": 3,
            "data": {"source": {"type": "folder", "path": "/nonexistent"}},
            "input": {"channels": channels, "size": list(size)},
            "preprocess": list(preprocess),
            "model": {"layers": [first, {"type": "conv", "filters": 8, "kernel": 3}, {"type": "global_avg_pool"}]},
        }
    )
    torch.manual_seed(seed)
    model = build_model(spec)
    for m in model.modules():  # Why: fresh BatchNorms are the identity and would hide a wrong fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    return spec, model.eval()


NORM = {"type": "normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CASES = {
    "same, odd pixel after (ZeroPad2d)": ([NORM], {"type": "conv", "filters": 6, "kernel": 4, "stride": 2}),
    "same, symmetric": ([NORM], {"type": "conv", "filters": 6, "kernel": 3, "stride": 2, "batch_norm": True}),
    "valid: a bias": ([NORM], {"type": "conv", "filters": 6, "kernel": 5, "padding": "valid", "batch_norm": True}),
    "stride 4, BN, relu": ([NORM], {"type": "conv", "filters": 4, "kernel": 5, "stride": 4, "activation": "relu",
                                    "batch_norm": True}),
    "rescale first, then normalize": (
        [{"type": "rescale", "scale": 0.00392156862745098, "offset": -0.5}, NORM],
        {"type": "conv", "filters": 6, "kernel": 3, "stride": 2, "bias": False},
    ),
    "center crop between": (
        [{"type": "center_crop", "size": [32, 30]}, NORM],
        {"type": "conv", "filters": 6, "kernel": 3, "stride": 2, "batch_norm": True},
    ),
    "denoise first (only the suffix folds)": (
        [{"type": "denoise", "method": "gaussian", "kernel": 3}, NORM],
        {"type": "conv", "filters": 6, "kernel": 3, "stride": 2},
    ),
    "grayscale, then normalize": (
        [{"type": "grayscale"}, {"type": "normalize", "mean": [0.5], "std": [0.25]}],
        {"type": "conv", "filters": 6, "kernel": 3, "stride": 2},
    ),
    "stride 1, wide": ([NORM], {"type": "conv", "filters": 16, "kernel": 3, "batch_norm": True}),
    "no normalize: the 1/255 alone": ([], {"type": "conv", "filters": 6, "kernel": 3, "stride": 2}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_the_folded_model_gives_the_models_outputs(name):
    pre, first = CASES[name]
    spec, model = model_for(pre, first)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_for_export(model)
    assert folded is not model
    x = torch.from_numpy(photos(spec.input.size))
    with torch.no_grad():
        want, got = model.logits(x), folded.logits(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the model itself changed"
    assert isinstance(folded.body[0], FoldedStem)
    assert not [s for s in folded.preprocess.steps if isinstance(s, AffineStep)]
    assert folded.preprocess.scale_first == name.startswith(("denoise", "grayscale"))  # the 1/255 before them stays


def ops_before_first_conv(proto) -> list[str]:
    ops = []
    for node in proto.graph.node:
        if node.op_type == "Conv":
            return ops
        ops.append(node.op_type)
    raise AssertionError("no Conv")


@pytest.mark.parametrize(
    ("name", "ops"),
    [("valid: a bias", ["Cast"]), ("stride 4, BN, relu", ["Cast", "Add"]), ("no normalize: the 1/255 alone", ["Cast"])],
)
def test_the_exported_graph_matches_pytorch_with_the_affine_gone(name, ops):
    spec, model = model_for(*CASES[name])
    proto = _export_proto(model, spec)
    assert ops_before_first_conv(proto) == ops
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    images = photos(spec.input.size)
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(ort_probabilities(proto.SerializeToString(), images), want, atol=1e-5)


def test_grayscale_and_training_mode_are_left_alone():
    spec, model = model_for([{"type": "grayscale"}], {"type": "conv", "filters": 4, "kernel": 3, "stride": 2})
    assert fold_for_export(model.train()) is model
    assert fold_for_export(model.eval()) is model  # the 1/255 comes before the grayscale: nothing to fold


def test_a_residual_first_layer_gets_the_merged_affine():
    residual = {"type": "residual", "layers": [{"type": "conv", "filters": 3, "kernel": 3}]}
    spec, model = model_for([NORM], residual)
    folded = fold_for_export(model)
    assert not isinstance(folded.body[0], FoldedStem)
    x = torch.from_numpy(photos(spec.input.size))
    with torch.no_grad():
        assert torch.allclose(folded.logits(x), model.logits(x), atol=1e-4)
    assert ops_before_first_conv(_export_proto(model, spec)) == ["Cast", "Mul", "Add"]
