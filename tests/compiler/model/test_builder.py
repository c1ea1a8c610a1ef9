"""spec -> torch module: the registry, shapes and parameter counts against ``spec.summary()``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from convspec.compiler.model.builder import ConvspecModel, build_model
from convspec.compiler.model.layers import ACTIVATIONS, BUILDERS, register
from convspec.specs import LAYER_TYPES, SpecError, spec_from_dict
from convspec.specs.layers import Conv

torch.set_num_threads(1)

NO_DATA = "/nonexistent-convspec-test-data"  # unreadable source: classes come from `classes`


def make_spec(layers, *, channels=3, size=(12, 12), task="multiclass", classes=3, preprocess=(), augment=(), head=True):
    """A minimal valid spec around ``layers`` (raises SpecError like a file would)."""
    return spec_from_dict(
        {
            "version": 1,
            "task": task,
            "classes": classes,
            "data": {"source": {"type": "folder", "path": NO_DATA}},
            "input": {"channels": channels, "size": list(size)},
            "preprocess": list(preprocess),
            "augment": list(augment),
            "model": {"layers": layers, "head": head},
        }
    )


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_against_summary(spec, batch: int = 2) -> ConvspecModel:
    """Every top-level layer's output shape and params equal the summary's row; totals too."""
    summary = spec.summary()
    model = build_model(spec).eval()
    assert trainable(model) == summary.params
    rows = [r for r in summary.rows if r.depth == 0 and r.path[:2] == ("model", "layers")]
    assert len(rows) == len(model.body)
    x = torch.randint(0, 256, (batch, *model.input_shape), dtype=torch.uint8)
    with torch.inference_mode():
        h = model.preprocess(x)
        for row, child in zip(rows, model.body, strict=True):
            h = child(h)
            assert tuple(h.shape) == (batch, *row.shape), row.name
            assert trainable(child) == row.params, row.name
        out = model(x)
    assert tuple(out.shape) == (batch, *summary.output_shape)
    return model


# ----------------------------------------------------------------- registry


def test_registry_covers_every_layer_type():
    assert set(BUILDERS) == set(LAYER_TYPES.values())


def test_register_twice_raises():
    with pytest.raises(ValueError, match="already has a builder"):
        register(Conv)(lambda layer, shape: (nn.Identity(), shape))
    assert BUILDERS[Conv].__name__ == "build_conv"


def test_activations_cover_the_language():
    from typing import get_args

    from convspec.specs.base import Activation

    assert set(ACTIVATIONS) == set(get_args(Activation))
    assert isinstance(ACTIVATIONS["none"](), nn.Identity)
    assert ACTIVATIONS["softmax"]().dim == 1
    assert ACTIVATIONS["leaky_relu"]().negative_slope == 0.01


# ----------------------------------------------------- one spec per layer type

CONV = {"type": "conv", "filters": 4, "kernel": 3}
LAYER_CASES: dict[str, list[tuple[str, list, dict]]] = {
    "conv": [
        ("same", [CONV], {}),
        ("same-stride2-odd", [{**CONV, "stride": 2}], {"size": (11, 12)}),
        ("same-even-kernel", [{**CONV, "kernel": [2, 4]}], {}),
        ("valid", [{**CONV, "padding": "valid", "kernel": [3, 5]}], {}),
        ("int-pad-dilation", [{**CONV, "padding": 1, "dilation": 2, "stride": [1, 2]}], {}),
        ("groups-bn-act", [{**CONV, "filters": 6, "groups": 3, "batch_norm": True, "activation": "gelu"}], {}),
        ("bn-with-bias", [{**CONV, "batch_norm": True, "bias": True}], {}),
        ("no-bias", [{**CONV, "bias": False, "activation": "softmax"}], {"channels": 1}),
    ],
    "max_pool": [
        ("size3-stride2-pad1", [{"type": "max_pool", "size": 3, "stride": 2, "padding": 1}], {"size": (13, 12)})
    ],
    "avg_pool": [
        ("default", [{"type": "avg_pool"}], {"size": (13, 12)}),
        ("pad", [{"type": "avg_pool", "size": [3, 2], "stride": 1, "padding": 1}], {}),
    ],
    "global_avg_pool": [("", [CONV, {"type": "global_avg_pool"}], {})],
    "global_max_pool": [("", [{"type": "global_max_pool"}], {})],
    "flatten": [("", [{"type": "flatten"}], {"size": (5, 7)})],
    "dense": [
        ("", [{"type": "flatten"}, {"type": "dense", "units": 7, "activation": "tanh"}], {"size": (4, 4)}),
        (
            "bn-no-bias",
            [
                {"type": "global_avg_pool"},
                {"type": "dense", "units": 5, "bias": False, "batch_norm": True, "activation": "silu"},
            ],
            {},
        ),
    ],
    "dropout": [("", [{"type": "dropout", "rate": 0.3}], {})],
    "backbone": [  # frozen backbones: tests/compiler/test_backbone.py
        ("pooled", [{"type": "backbone", "name": "mobilenetv3_small_100"}], {}),
        ("features", [{"type": "backbone", "name": "resnet18", "output": "features"}, CONV], {"size": (40, 33)}),
    ],
    "batch_norm": [
        ("image", [{"type": "batch_norm"}], {}),
        ("flat", [{"type": "flatten"}, {"type": "batch_norm"}], {"size": (3, 3)}),
    ],
    "activation": [(fn, [{"type": "activation", "fn": fn}], {}) for fn in ("relu", "elu", "leaky_relu", "sigmoid")],
    "repeat": [
        (
            "",
            [{"type": "repeat", "times": 3, "layers": [{**CONV, "batch_norm": True}, {"type": "max_pool", "size": 1}]}],
            {},
        )
    ],
    "residual": [
        ("identity", [{"type": "residual", "layers": [{**CONV, "filters": 3}, {**CONV, "filters": 3}]}], {}),
        (
            "projection-bn",
            [
                {
                    "type": "residual",
                    "layers": [
                        {**CONV, "stride": 2, "batch_norm": True, "activation": "relu"},
                        {**CONV, "batch_norm": True},
                    ],
                }
            ],
            {"size": (11, 12)},
        ),
        (
            "projection-no-bn",
            [{"type": "residual", "activation": "none", "layers": [{**CONV, "filters": 8, "kernel": 1}]}],
            {},
        ),
        (
            "nested",
            [
                {
                    "type": "residual",
                    "layers": [{"type": "repeat", "times": 2, "layers": [{**CONV, "filters": 3, "batch_norm": True}]}],
                }
            ],
            {},
        ),
    ],
}
CASES = [
    pytest.param(layers, kw, id=f"{t}-{name}" if name else t)
    for t in LAYER_TYPES
    for name, layers, kw in LAYER_CASES.get(t, [("missing", None, {})])
]


@pytest.mark.parametrize(("layers", "kw"), CASES)
def test_layer_matches_summary(layers, kw):
    assert layers is not None, "add a LAYER_CASES entry for the new layer type"
    check_against_summary(make_spec(layers, **kw))


def test_every_layer_type_has_a_case():
    assert set(LAYER_TYPES) <= set(LAYER_CASES)


def test_conv_same_padding_is_keras_asymmetric():
    """6 px, kernel 3, stride 2: Keras pads (0, 1), so output i sees inputs 2i..2i+2."""
    spec = make_spec([{"type": "conv", "filters": 1, "kernel": 3, "stride": 2, "bias": False}], channels=1, size=(6, 6))
    model = build_model(spec)
    pad, conv = model.body[0].pad, model.body[0].conv
    assert isinstance(pad, nn.ZeroPad2d) and tuple(pad.padding) == (0, 1, 0, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # top-left tap picks x[2i, 2j]
    x = torch.arange(36, dtype=torch.float32).view(1, 1, 6, 6)
    out = model.body(x)
    assert torch.equal(out[0, 0], x[0, 0, ::2, ::2])


def test_conv_same_symmetric_uses_conv_padding():
    model = build_model(make_spec([{"type": "conv", "filters": 2, "kernel": 5}]))
    assert not hasattr(model.body[0], "pad") and model.body[0].conv.padding == (2, 2)


def test_conv_block_order_and_bias_default():
    model = build_model(make_spec([{**CONV, "batch_norm": True, "activation": "relu"}]))
    block = model.body[0]
    assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert block.conv.bias is None


def test_repeat_copies_have_their_own_weights():
    model = build_model(make_spec([{"type": "repeat", "times": 2, "layers": [{**CONV, "filters": 3}]}]))
    a, b = model.body[0][0][0].conv.weight, model.body[0][1][0].conv.weight
    assert a.data_ptr() != b.data_ptr()


# ------------------------------------------------------------ random stacks

ACTS = st.sampled_from(["relu", "none", "tanh", "gelu"])
conv_layer = st.fixed_dictionaries(
    {"type": st.just("conv"), "filters": st.integers(1, 6), "kernel": st.integers(1, 4)},
    optional={
        "stride": st.integers(1, 2),
        "padding": st.sampled_from(["same", "valid", 0, 1]),
        "batch_norm": st.booleans(),
        "activation": ACTS,
        "dilation": st.integers(1, 2),
    },
)
pool_layer = st.fixed_dictionaries(
    {"type": st.sampled_from(["max_pool", "avg_pool"]), "size": st.integers(1, 3)},
    optional={"stride": st.integers(1, 2), "padding": st.integers(0, 1)},
)
simple_layer = st.one_of(
    conv_layer,
    pool_layer,
    st.just({"type": "batch_norm"}),
    st.just({"type": "dropout", "rate": 0.1}),
    st.builds(lambda fn: {"type": "activation", "fn": fn}, ACTS),
)
block_layer = st.one_of(
    st.builds(
        lambda ls, t: {"type": "repeat", "times": t, "layers": ls},
        st.lists(conv_layer, min_size=1, max_size=2),
        st.integers(1, 2),
    ),
    st.builds(
        lambda ls, a: {"type": "residual", "layers": ls, "activation": a},
        st.lists(conv_layer, min_size=1, max_size=2),
        ACTS,
    ),
)
tail = st.sampled_from(
    [
        [],
        [{"type": "global_avg_pool"}],
        [{"type": "global_max_pool"}],
        [{"type": "flatten"}],
        [{"type": "flatten"}, {"type": "dense", "units": 5, "activation": "relu", "batch_norm": True}],
    ]
)
stack = st.tuples(st.lists(st.one_of(simple_layer, simple_layer, block_layer), min_size=1, max_size=4), tail)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stack=stack,
    channels=st.sampled_from([1, 3]),
    h=st.integers(3, 14),
    w=st.integers(3, 14),
    task=st.sampled_from(["binary", "multiclass"]),
)
def test_random_stacks_agree_with_summary(stack, channels, h, w, task):
    body, end = stack
    try:
        spec = make_spec(body + end, channels=channels, size=(h, w), task=task, classes=2 if task == "binary" else 4)
    except SpecError as e:
        # Shapes that do not work out (image too small, pool padding, unmatched residual)
        # are reported at a layer, never as a crash.
        assert all(issue.path[:2] == ("model", "layers") for issue in e.issues), str(e)
        return
    check_against_summary(spec)


FAULTS = [
    pytest.param([{"type": "dense", "units": 3}], "flatten", id="dense-on-image"),
    pytest.param(
        [{"type": "conv", "filters": 2, "kernel": 13, "padding": "valid"}], "too small", id="kernel-larger-than-image"
    ),
    pytest.param([{"type": "flatten"}, {"type": "max_pool"}], "image input", id="pool-on-flat"),
    pytest.param([{"type": "residual", "layers": [{"type": "global_avg_pool"}]}], "1x1 conv", id="residual-to-flat"),
    pytest.param(
        [{"type": "repeat", "times": 5, "layers": [{"type": "max_pool"}]}], "too small", id="repeat-downsamples-away"
    ),
    pytest.param([{"type": "max_pool", "size": 2, "padding": 2}], "half the pool size", id="pool-padding"),
]


@pytest.mark.parametrize(("layers", "needle"), FAULTS)
@given(
    prefix=st.lists(st.sampled_from([{"type": "batch_norm"}, {"type": "activation", "fn": "relu"}, CONV]), max_size=2)
)
@settings(max_examples=5, deadline=None)
def test_invalid_stacks_raise_spec_error_at_load(layers, needle, prefix):
    with pytest.raises(SpecError, match=needle) as info:
        make_spec(prefix + layers)
    assert info.value.issues[0].path[:2] == ("model", "layers")


# ------------------------------------------------------------------ ResNet-18


def _basic(filters: int, stride: int = 1) -> dict:
    pad = 1  # torchvision's symmetric padding (Keras 'same' would pad (0, 1) at stride 2)
    return {
        "type": "residual",
        "layers": [
            {
                "type": "conv",
                "filters": filters,
                "kernel": 3,
                "stride": stride,
                "padding": pad,
                "batch_norm": True,
                "activation": "relu",
            },
            {"type": "conv", "filters": filters, "kernel": 3, "padding": pad, "batch_norm": True},
        ],
    }


RESNET18 = [
    {"type": "conv", "filters": 64, "kernel": 7, "stride": 2, "padding": 3, "batch_norm": True, "activation": "relu"},
    {"type": "max_pool", "size": 3, "stride": 2, "padding": 1},
    {"type": "repeat", "times": 2, "layers": [_basic(64)]},
    _basic(128, 2),
    _basic(128),
    _basic(256, 2),
    _basic(256),
    _basic(512, 2),
    _basic(512),
    {"type": "global_avg_pool"},
]


def test_resnet18_has_torchvision_parameter_count():
    spec = make_spec(RESNET18, size=(224, 224), classes=1000)
    assert spec.summary().params == 11_689_512
    model = build_model(spec).eval()
    assert trainable(model) == 11_689_512
    with torch.inference_mode():
        out = model(torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8))
    assert out.shape == (1, 1000)


# ------------------------------------------------------------ model behaviour

SMALL = [
    {**CONV, "batch_norm": True, "activation": "relu"},
    {"type": "max_pool"},
    {"type": "flatten"},
    {"type": "dropout", "rate": 0.5},
]


def test_eval_outputs_multiclass_probabilities_train_outputs_logits():
    model = build_model(make_spec(SMALL, classes=4))
    x = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        p = model(x)
        z = model.logits(x)
    assert p.shape == (5, 4)
    assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-6) and bool((p >= 0).all())
    assert torch.allclose(p, torch.softmax(z, 1))
    model.train()
    torch.manual_seed(0)
    assert model(x).shape == (5, 4)


def test_eval_outputs_binary_probability():
    model = build_model(make_spec(SMALL, task="binary", classes=2)).eval()
    x = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    with torch.no_grad():
        p, z = model(x), model.logits(x)
    assert p.shape == (6, 1) and bool(((p >= 0) & (p <= 1)).all())
    assert torch.allclose(p, torch.sigmoid(z))
    assert model.num_classes == 2


def test_build_model_maps_uint8_images_to_probabilities():
    """SPEC.md's Python API: ``build_model(spec)`` is uint8 images -> probabilities, as it comes."""
    model = build_model(make_spec(SMALL, classes=3))
    x = torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8)
    with torch.no_grad():
        probs = model(x)
    assert not model.training and torch.allclose(probs.sum(1), torch.ones(4))


def test_uint8_and_float_pixels_agree():
    model = build_model(make_spec(SMALL)).eval()
    x = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x.float()))


def test_headless_model_gives_its_last_layer_as_logits_and_returns_probabilities():
    layers = [{"type": "global_avg_pool"}, {"type": "dense", "units": 3}]
    model = build_model(make_spec(layers, head=False, classes=3)).train()
    assert isinstance(model.head, nn.Identity) and not model.has_head
    x = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    with torch.no_grad():
        logits = model.body(model.preprocess(x))
        assert torch.equal(model(x), logits)  # training mode: the logits
        assert torch.allclose(model.eval()(x), torch.softmax(logits, dim=1))  # what is exported


def test_head_flattens_image_output():
    model = build_model(make_spec([CONV], classes=3))
    assert isinstance(model.head.flatten, nn.Flatten) and model.head.linear.in_features == 4 * 12 * 12


def test_class_count_resolution():
    spec = make_spec(SMALL, classes="auto")
    with pytest.raises(SpecError, match="number of classes is unknown"):
        build_model(spec)
    model = build_model(spec, num_classes=5)
    assert model.num_classes == 5 and model.head.linear.out_features == 5 and model.class_names is None
    model = build_model(spec, class_names=["a", "b", "c"])
    assert model.num_classes == 3 and model.class_names == ["a", "b", "c"]
    with pytest.raises(SpecError):
        build_model(make_spec(SMALL, classes=3), num_classes=4)
    with pytest.raises(SpecError):
        build_model(spec, num_classes=2, class_names=["a", "b", "c"])
    named = make_spec(SMALL, classes=["cat", "dog", "eel"])
    assert build_model(named).class_names == ["cat", "dog", "eel"]
    assert build_model(make_spec(SMALL, task="binary", classes="auto")).num_classes == 2


def test_builtin_digits_class_names():
    spec = spec_from_dict(
        {
            "version": 1,
            "task": "multiclass",
            "data": {"source": {"type": "builtin", "name": "digits"}},
            "input": {"channels": 1, "size": [8, 8]},
            "model": {"layers": [{"type": "flatten"}]},
        }
    )
    model = build_model(spec)
    assert model.class_names == [str(i) for i in range(10)] and model.input_shape == (1, 8, 8)


def test_set_normalization_lives_in_buffers():
    spec = make_spec(SMALL, preprocess=[{"type": "normalize", "mean": "auto"}])
    model = build_model(spec).eval()
    assert model.needs_normalization
    x = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    seen = model.preprocess.before_auto_normalize(x)
    assert torch.allclose(seen, x.float() / 255)
    model.set_normalization([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    state = model.state_dict()
    assert torch.allclose(state["preprocess.steps.0.mean"].flatten(), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(state["preprocess.steps.0.std"].flatten(), torch.tensor([0.5, 0.25, 2.0]))
    expected = (x.float() / 255 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(
        1, 3, 1, 1
    )
    assert torch.allclose(model.preprocess(x), expected, atol=1e-6)
    fresh = build_model(spec)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.preprocess.steps[0].std, model.preprocess.steps[0].std)
    with pytest.raises(ValueError, match="one per channel"):
        model.set_normalization([0.1], [0.5])
    with pytest.raises(ValueError, match="mean: auto"):
        build_model(make_spec(SMALL)).set_normalization([0.1] * 3, [1.0] * 3)


@pytest.mark.parametrize("k", [1, 0, -2])
def test_num_classes_below_two_is_refused_for_multiclass(k):
    """``build_model(spec, num_classes=K)`` where the spec cannot know K: K=1 built a softmax that is
    always 1.0, K=0 an empty output, K=-2 a torch traceback."""
    spec = make_spec([{"type": "flatten"}], classes="auto")
    with pytest.raises(SpecError, match=f"task: multiclass needs at least 2 classes; got num_classes={k}"):
        build_model(spec, num_classes=k)
    with pytest.raises(SpecError, match=r"num_classes: expected an integer \(got '10'\)"):
        build_model(spec, num_classes="10")
    with pytest.raises(SpecError, match=r"task: binary needs exactly 2 classes; got 3$"):  # the key once
        build_model(make_spec([{"type": "flatten"}], task="binary", classes="auto"), num_classes=3)


def test_a_spec_changed_in_python_is_checked_again_as_its_file_would_be():
    """``spec.model.layers[0].filters = 0`` built Conv2d(1, 0), whose forward raised a torch error."""
    spec = make_spec([{"type": "conv", "filters": 4, "kernel": 3}, {"type": "global_avg_pool"}], classes=2)
    spec.model.layers[0].filters = 0
    with pytest.raises(SpecError, match=r"model.layers\[0\].filters: .*greater than 0"):
        build_model(spec)
    spec.model.layers[0].filters = 4
    assert build_model(spec)(torch.zeros(1, 3, 12, 12, dtype=torch.uint8)).shape == (1, 2)
