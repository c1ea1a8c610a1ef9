"""Static shapes, parameters and MACs: the published counts, and the rules behind them."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import pytest

from convspec.specs import SpecError, load_spec, load_spec_text
from convspec.specs.shape_rules import conv_out, same_padding

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

HEAD = """version: 1
task: multiclass
classes: 10
data: {source: {type: builtin, name: digits}}
input: {channels: %(channels)d, size: [%(h)d, %(w)d]}
model:
  head: %(head)s
  layers:
"""


def spec_text(layers: str, channels: int = 1, h: int = 16, w: int = 16, head: bool = True) -> str:
    return HEAD % {"channels": channels, "h": h, "w": w, "head": str(head).lower()} + layers


def summary_of(layers: str, body_only: bool = False, **kw):
    """The spec's summary; ``body_only``: without the head's rows (the body's own shapes and counts)."""
    s = load_spec_text(spec_text(layers, **kw)).summary()
    if body_only:
        s.rows[:] = [r for r in s.rows if not r.name.endswith(("(head)", "(head) softmax"))]
        s.output_shape = top_rows(s)[-1].shape
    return s


def top_rows(summary):
    return [r for r in summary.rows if r.depth == 0]


# ------------------------------------------------------------ published models


def test_resnet18_matches_torchvision():
    s = load_spec(EXAMPLES / "resnet18.yaml").summary()
    assert s.input_shape == (3, 224, 224)
    assert s.params == 11_689_512
    assert s.macs == 1_814_073_344
    assert s.output_shape == (1000,)
    shapes = [r.shape for r in top_rows(s)]
    assert (64, 56, 56) in shapes and (128, 28, 28) in shapes and (256, 14, 14) in shapes
    assert shapes[-2:] == [(512,), (1000,)]
    # Three stages start with a projection: a 1x1/2 conv + BN on the shortcut.
    shortcuts = [r for r in s.rows if r.name.startswith("shortcut")]
    assert [r.name for r in shortcuts] == ["shortcut 1x1/2 +bn"] * 3
    assert [r.params for r in shortcuts] == [64 * 128 + 256, 128 * 256 + 512, 256 * 512 + 1024]


def test_lenet5_has_61706_parameters():
    s = load_spec(EXAMPLES / "lenet5.yaml").summary()
    assert s.params == 61_706
    assert [r.shape for r in top_rows(s)] == [
        (6, 28, 28),
        (6, 14, 14),
        (16, 10, 10),
        (16, 5, 5),
        (400,),
        (120,),
        (84,),
        (10,),
    ]
    assert [r.params for r in top_rows(s)] == [156, 0, 2416, 0, 0, 48_120, 10_164, 850]


def test_summary_of_every_example():
    totals = {
        "digits": (21_162, (10,)),  # 352 + 9,280 + 11,530
        "digits-tune": (78_954, (10,)),
        "digits-binary": (55_969, (1,)),
        "lenet5": (61_706, (10,)),
        "resnet18": (11_689_512, (1000,)),
    }
    for name, (params, out) in totals.items():
        s = load_spec(EXAMPLES / f"{name}.yaml").summary()
        assert (s.params, s.output_shape) == (params, out), name
        assert "total" in str(s) and f"{params:,}" in str(s)
    # Examples added later (and shapes, whose head depends on its data) summarize too.
    for path in sorted(EXAMPLES.glob("*.yaml")):
        s = load_spec(path).summary()
        assert s.params > 0 and s.rows, path.name


def test_shapes_example_head_follows_its_data(tmp_path: Path):
    spec = tmp_path / "shapes.yaml"
    shutil.copy(EXAMPLES / "shapes.yaml", spec)
    # No data: the body is counted, the head's size is unknown and said to be.
    s = load_spec(spec).summary()
    assert (s.params, s.output_shape) == (196_064, None)
    assert "not readable" in s.classes_note
    # With the generated data: three classes, a 64 -> 3 head.
    make = runpy.run_path(str(EXAMPLES / "shapes" / "make_shapes.py"))["make_shapes"]
    assert make(tmp_path / "data" / "shapes", per_class=2, size=24, seed=1) == 6
    s = load_spec(spec).summary()
    assert (s.params, s.output_shape) == (196_064 + 64 * 3 + 3, (3,))
    assert load_spec(spec).num_classes() == 3


# ------------------------------------------------------------------ the rules


@pytest.mark.parametrize(
    ("size", "k", "s", "expected"), [(15, 3, 2, 8), (16, 3, 2, 8), (17, 5, 2, 9), (7, 3, 3, 3), (1, 7, 2, 1)]
)
def test_same_padding_with_stride_uses_ceil(size, k, s, expected):
    assert conv_out(size, k, s, 1, "same") == expected
    before, after = same_padding(size, k, s, 1)
    assert after - before in (0, 1)  # Keras: the odd pixel goes after
    assert (size + before + after - k) // s + 1 == expected


def test_conv_same_vs_valid_in_a_spec():
    s = summary_of(
        "    - {type: conv, filters: 4, kernel: 3, stride: 2}\n"
        "    - {type: conv, filters: 4, kernel: 3, stride: 2, padding: valid}\n",
        h=15,
        w=21,
    )
    assert [r.shape for r in top_rows(s)][:2] == [(4, 8, 11), (4, 3, 5)]
    # MACs: output pixels x filters x (in_channels x kernel area)
    assert [r.macs for r in top_rows(s)][:2] == [8 * 11 * 4 * 9, 3 * 5 * 4 * 36]


def test_conv_counts_bias_bn_groups_and_dilation():
    s = summary_of(
        "    - {type: conv, filters: 8, kernel: 3}\n"  # 8*1*9 + 8
        "    - {type: conv, filters: 8, kernel: 3, batch_norm: true}\n"  # 8*8*9 + 2*8, no bias
        "    - {type: conv, filters: 16, kernel: 3, groups: 4, bias: false}\n"  # 16*2*9
        "    - {type: conv, filters: 4, kernel: 3, dilation: 2, padding: valid}\n",  # 16 - 4 = 12
        body_only=True,
    )
    rows = top_rows(s)
    assert [r.params for r in rows] == [80, 592, 288, 4 * 16 * 9 + 4]
    assert rows[3].shape == (4, 12, 12)


def test_residual_projection_counts_the_1x1_conv_and_its_batch_norm():
    body = (
        "    - type: residual\n      layers:\n"
        "        - {type: conv, filters: 16, kernel: 3, stride: 2, batch_norm: %s}\n"
    )
    with_bn = summary_of(body % "true", channels=3, body_only=True)
    without = summary_of(body % "false", channels=3, body_only=True)
    conv_bn, conv = 16 * 27 + 32, 16 * 27 + 16
    assert with_bn.params == conv_bn + 3 * 16 + 2 * 16
    assert without.params == conv + 3 * 16
    assert with_bn.output_shape == (16, 8, 8)
    sc = [r for r in with_bn.rows if r.name.startswith("shortcut")]
    assert len(sc) == 1 and sc[0].macs == 8 * 8 * 16 * 3
    # Same shape in and out: an identity shortcut, nothing counted.
    same = summary_of("    - {type: conv, filters: 16}\n" + body.replace("stride: 2, ", "") % "true", body_only=True)
    assert not [r for r in same.rows if r.name.startswith("shortcut")]
    assert same.params == (16 * 9 + 16) + (16 * 16 * 9 + 32)


def test_repeat_gives_each_copy_its_own_weights():
    s = summary_of(
        "    - type: repeat\n      times: 3\n      layers:\n        - {type: conv, filters: 4}\n", body_only=True
    )
    assert s.params == (4 * 9 + 4) + 2 * (4 * 4 * 9 + 4)
    assert [r.name for r in s.rows if r.depth == 1] == ["copy 1", "copy 2", "copy 3"]


def test_flatten_and_global_pools_make_flat_features():
    s = summary_of("    - {type: conv, filters: 6}\n    - {type: max_pool}\n    - {type: flatten}\n", body_only=True)
    assert s.output_shape == (6 * 8 * 8,)
    for pool in ("global_avg_pool", "global_max_pool"):
        s = summary_of(f"    - {{type: conv, filters: 6}}\n    - {{type: {pool}}}\n    - {{type: dense, units: 5}}\n")
        assert [r.shape for r in top_rows(s)] == [(6, 16, 16), (6,), (5,), (10,)]
        assert s.params == (6 * 9 + 6) + (6 * 5 + 5) + (5 * 10 + 10)


def test_head_flattens_an_image_and_binary_has_one_unit():
    s = summary_of("    - {type: conv, filters: 2}\n")
    assert [r.name for r in top_rows(s)][-2:] == ["flatten (head)", "dense (head) softmax"]
    assert s.params == (2 * 9 + 2) + (2 * 256 * 10 + 10)
    binary = load_spec_text(
        spec_text("    - {type: global_avg_pool}\n")
        .replace("multiclass", "binary")
        .replace("classes: 10", "classes: auto")
        .replace("name: digits}", "name: digits, classes: [0, 1]}")
    )
    assert binary.summary().output_shape == (1,)


FLAT = "    - {type: flatten}\n"


@pytest.mark.parametrize(
    "layers, task, where, says",
    [
        (FLAT + "    - {type: dense, units: 7}\n", "multiclass", "10:28", "10 values, one per class; it gives 7"),
        (FLAT + "    - {type: dense, units: 2}\n", "binary", "10:28", "1 value (the binary logit); it gives 2"),
        (
            "    - {type: flatten}\n    - {type: dense, units: 10, activation: softmax}\n",
            "multiclass",
            "10:44",
            "adds the softmax itself; remove this softmax",
        ),
        ("    - {type: global_avg_pool}\n    - {type: activation, fn: sigmoid}\n", "binary", "10:30", "this sigmoid"),
        ("    - {type: conv, filters: 10}\n", "multiclass", "9:7", "it gives shape (10, 16, 16)"),
        (
            FLAT + "    - {type: dense, units: 10, activation: softmax}\n    - {type: dropout, rate: 0.1}\n",
            "multiclass",
            "10:44",
            "remove this softmax",
        ),  # a trailing no-op does not hide it
        (
            "    - {type: flatten}\n    - type: repeat\n      times: 2\n      layers:\n"
            "        - {type: dense, units: 3}\n",
            "multiclass",
            "13:32",
            "it gives 3",
        ),
    ],
)
def test_headless_spec_must_end_in_the_logits(layers, task, where, says):
    """``model.head: false``: the last layer is the logits; a wrong width or a softmax is refused at its line."""
    text = spec_text(layers, head=False)
    if task == "binary":
        text = text.replace("multiclass", "binary").replace("classes: 10", "classes: auto")
        text = text.replace("name: digits}", "name: digits, classes: [3, 8]}")
    with pytest.raises(SpecError) as e:
        load_spec_text(text, "s.yaml")
    assert f"s.yaml:{where}:" in str(e.value) and says in str(e.value)


def test_headless_spec_ending_in_one_logit_per_class_is_accepted():
    s = summary_of("    - {type: conv, filters: 10}\n    - {type: global_avg_pool}\n", head=False)
    assert s.output_shape == (10,)


def test_preprocess_crops_and_grayscale_change_the_model_input():
    text = spec_text("    - {type: flatten}\n    - {type: dense, units: 10}\n", channels=3, h=20, w=30, head=False)
    text += "preprocess:\n  - {type: center_crop, size: [12, 10]}\n  - {type: grayscale}\n"
    s = load_spec_text(text).summary()
    assert s.input_shape == (3, 20, 30)
    assert top_rows(s)[-2].shape == (120,) and s.output_shape == (10,)


def test_shape_errors_name_the_layer():
    with pytest.raises(SpecError) as info:
        summary_of(
            "    - {type: max_pool, size: 4}\n    - {type: max_pool, size: 4}\n    - {type: max_pool, size: 4}\n"
        )
    (issue,) = info.value.issues
    assert issue.path == ("model", "layers", 2)
    assert "0x0 pixels" in issue.message and issue.line is not None


def test_a_normalize_after_grayscale_says_why_it_needs_one_value():
    """It said "needs one value per channel: 1 (input.channels is 3)", which contradicts itself."""
    text = (
        "version: 1\ntask: multiclass\nclasses: 2\ndata:\n  source: {type: builtin, name: digits}\n"
        "input: {channels: 3, size: [8, 8]}\n"
        "preprocess:\n  - {type: grayscale}\n  - {type: normalize, mean: [0.5, 0.5, 0.5], std: [0.5]}\n"
        "model:\n  layers: [{type: flatten}]\n"
    )
    with pytest.raises(SpecError, match=r"needs one value per channel: 1 \(after preprocess\[0\] grayscale\); got 3"):
        load_spec_text(text)
