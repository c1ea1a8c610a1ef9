"""The ``backbone`` layer in the spec language: shapes and counts from the shipped table, rules, warnings."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from convspec.specs import SpecError, load_spec, load_spec_text
from convspec.specs import backbones as bb
from convspec.specs.yamlio import dump_yaml

RESNET18 = 11_176_512  # timm's resnet18 without its classifier (num_classes=0), 3 input channels


def spec_data(layers, *, channels=3, size=64, preprocess=()):
    return {
        "version": 1,
        "task": "multiclass",
        "classes": 10,
        "data": {"source": {"type": "builtin", "name": "digits"}},
        "input": {"channels": channels, "size": [size, size]},
        "preprocess": list(preprocess),
        "model": {"layers": layers},
    }


def load(layers, **kw):
    return load_spec_text(dump_yaml(spec_data(layers, **kw)), "bb.yaml")


def errors(layers, **kw) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(layers, **kw)
    return [str(i) for i in info.value.issues]


def test_resnet18_summary_has_timm_count_plus_head():
    s = load([{"type": "backbone", "name": "resnet18", "weights": "none"}]).summary()
    assert s.rows[0].name == "backbone resnet18" and s.rows[0].shape == (512,)
    assert s.rows[0].params == RESNET18
    assert s.params == RESNET18 + 512 * 10 + 10
    assert s.frozen == 0 and s.trainable == s.params
    assert s.output_shape == (10,)
    assert "frozen" not in str(s)  # no frozen column without frozen parameters: the table reads as before
    assert any("scaled by pixel count" in n for n in s.notes)


def test_validates_and_summarizes_without_torch_or_timm(tmp_path: Path):
    spec = tmp_path / "bb.yaml"
    spec.write_text(dump_yaml(spec_data([{"type": "backbone", "name": "resnet18", "weights": "none"}])))
    script = textwrap.dedent(
        """
        import sys
        for name in ("torch", "timm", "torchvision", "onnx", "onnxruntime"):
            sys.modules[name] = None
        from convspec.specs import load_spec
        s = load_spec(sys.argv[1]).summary()
        print(s.rows[0].params, s.params)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(spec)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(RESNET18), str(RESNET18 + 5130)]


def test_stem_follows_input_channels():
    one = load([{"type": "backbone", "name": "resnet18"}], channels=1).summary()
    assert one.rows[0].params == RESNET18 - 2 * 64 * 7 * 7  # conv1: 64 filters of 7x7 per input channel


def test_frozen_and_last_stages():
    frozen = load([{"type": "backbone", "name": "resnet18", "trainable": False}]).summary()
    assert frozen.frozen == RESNET18 and frozen.trainable == 5130
    assert "frozen" in str(frozen) and "trainable parameters: 5,130 of" in str(frozen)
    two = load([{"type": "backbone", "name": "resnet18", "trainable": 2}]).summary()
    stages = bb.table()["resnet18"].stage_params[3]
    assert two.frozen == sum(stages[:3]) and two.rows[0].frozen == sum(stages[:3])
    assert "last 2 stages train" in two.rows[0].name


def test_features_shape_follows_the_rounding():
    rows = load(
        [{"type": "backbone", "name": "resnet18", "output": "features"}, {"type": "global_avg_pool"}], size=33
    ).summary()
    assert rows.rows[0].shape == (512, 2, 2)  # ceil(33 / 32)
    conv = load([{"type": "backbone", "name": "convnext_atto", "output": "features"}], size=33).summary()
    assert conv.rows[0].shape == (320, 1, 1)  # floor(33 / 32)
    assert conv.rows[1].name == "flatten (head)"


def test_mobilenet_features_drop_the_head_conv():
    info = bb.table()["mobilenetv3_small_100"]
    pooled = load([{"type": "backbone", "name": "mobilenetv3_small_100"}]).summary().rows[0]
    feats = load([{"type": "backbone", "name": "mobilenetv3_small_100", "output": "features"}]).summary().rows[0]
    assert pooled.shape == (1024,) and feats.shape == (576, 2, 2)
    assert pooled.params - feats.params == info.head_params == 576 * 1024 + 1024


def test_too_small_input_is_an_error():
    [msg] = errors([{"type": "backbone", "name": "convnext_atto"}], size=16)
    assert "model.layers[0]" in msg and "at least 32x32" in msg


@pytest.mark.parametrize(
    "layers, where, words",
    [
        ([{"type": "conv", "filters": 3}, {"type": "backbone", "name": "resnet18"}], "model.layers[1]", "first layer"),
        (
            [{"type": "repeat", "times": 1, "layers": [{"type": "backbone", "name": "resnet18"}]}],
            "model.layers[0].layers[0]",
            "first layer",
        ),
        ([{"type": "backbone", "name": "resnet19"}], "model.layers[0].name", "did you mean resnet18"),
        ([{"type": "backbone", "name": "resnet18", "trainable": 0}], "model.layers[0].trainable", "greater than 0"),
        ([{"type": "backbone", "name": "resnet18", "trainable": 6}], "model.layers[0].trainable", "has 5 stages"),
        ([{"type": "backbone", "name": "resnet18", "weights": ""}], "model.layers[0].weights", ""),
    ],
)
def test_bad_backbones_are_spec_errors_at_line_col(layers, where, words):
    msgs = errors(layers)
    hits = [m for m in msgs if f": {where}: " in m and words in m]
    assert hits, msgs
    assert hits[0].startswith("bb.yaml:") and hits[0].split(":")[1].isdigit()


def test_unknown_name_with_another_timm_installed_is_a_warning(monkeypatch):
    monkeypatch.setattr(bb, "installed_timm_version", lambda: "99.0")
    spec = load([{"type": "backbone", "name": "resnet19"}])
    [w] = [w for w in spec.warnings if "installed timm 99.0" in w.message]
    assert "did you mean resnet18" in w.message


def test_name_outside_the_table_validates_with_unknown_shapes():
    spec = load([{"type": "backbone", "name": "regnetx_002"}, {"type": "dense", "units": 4}])
    s = spec.summary()
    assert s.rows[0].shape is None and s.output_shape is None
    assert any("not in convspec's table" in n for n in s.notes)
    assert any("not in convspec's backbone table" in w.message for w in spec.warnings)


def test_weights_path_is_relative_to_the_spec_folder(tmp_path: Path):
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "bb.yaml"
    path.write_text(dump_yaml(spec_data([{"type": "backbone", "name": "resnet18", "weights": "w/r18.safetensors"}])))
    spec = load_spec(path)
    assert spec.model.layers[0].weights == str(tmp_path / "specs" / "w" / "r18.safetensors")
    assert any("no such file" in w.message for w in spec.warnings)


IMAGENET = {"type": "normalize", "mean": "imagenet", "std": "imagenet"}


@pytest.mark.parametrize(
    "weights, preprocess, warned",
    [
        ("pretrained", [], True),
        ("pretrained", [{"type": "normalize", "mean": "auto"}], True),
        ("pretrained", [{"type": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}], True),
        ("pretrained", [IMAGENET], False),
        ("pretrained", [{"type": "normalize", "mean": "backbone"}], False),
        ("pretrained", [{"type": "normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}], False),
        ("none", [], False),
    ],
)
def test_pretrained_without_its_normalize_is_warned(weights, preprocess, warned):
    spec = load([{"type": "backbone", "name": "resnet18", "weights": weights}], preprocess=preprocess)
    hits = [w for w in spec.warnings if "normalize" in w.message]
    assert bool(hits) == warned, spec.warnings
    if hits:
        assert hits[0].as_warning().startswith("bb.yaml:") and ": warning: model.layers[0].weights: " in str(
            hits[0].as_warning()
        )


def test_one_channel_statistics_are_the_mean_of_three():
    mean, std = bb.normalize_values("imagenet", None, 1)
    assert mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3]) and std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    spec = load(
        [{"type": "backbone", "name": "resnet18", "weights": "pretrained"}],
        channels=1,
        preprocess=[{"type": "normalize", "mean": [0.449], "std": [0.226]}],
    )
    assert not spec.warnings


@pytest.mark.parametrize(
    "step, words",
    [
        ({"type": "normalize", "mean": "imagenet", "std": [0.2, 0.2, 0.2]}, "goes with std: imagenet"),
        ({"type": "normalize", "mean": [0.5, 0.5, 0.5], "std": "imagenet"}, "goes with mean: imagenet"),
    ],
)
def test_named_statistics_go_together(step, words):
    msgs = errors([{"type": "backbone", "name": "resnet18"}], preprocess=[step])
    assert any(words in m for m in msgs), msgs


def test_mean_backbone_needs_a_backbone():
    msgs = errors([{"type": "flatten"}], preprocess=[{"type": "normalize", "mean": "backbone"}])
    assert any("preprocess[0].mean: mean: backbone" in m for m in msgs), msgs


def test_validate_cli_prints_warnings_and_exits_0(tmp_path: Path):
    from convspec.compiler.cli import app

    path = tmp_path / "bb.yaml"
    path.write_text(dump_yaml(spec_data([{"type": "backbone", "name": "resnet18", "weights": "pretrained"}])))
    result = CliRunner().invoke(app, ["validate", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"{path}: OK" in result.stdout
    [line] = result.stderr.splitlines()
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: warning: model\.layers\[0\]\.weights: ", line), line


@pytest.mark.parametrize(
    "layers, words",
    [
        ([{"type": "backbone", "name": "mobilenetv3_smal_100"}], "did you mean mobilenetv3_small_100"),
        ([{"type": "flatten"}, {"type": "backbone", "name": "resnet18"}], "must be the first layer"),
    ],
)
def test_validate_cli_bad_backbone_exits_1(tmp_path: Path, layers, words):
    from convspec.compiler.cli import app

    path = tmp_path / "bb.yaml"
    path.write_text(dump_yaml(spec_data(layers)))
    result = CliRunner().invoke(app, ["validate", str(path)], catch_exceptions=False)
    assert result.exit_code == 1
    assert re.search(rf"^{re.escape(str(path))}:\d+:\d+: model\.layers\[\d\]", result.stderr), result.stderr
    assert words in result.stderr and "Traceback" not in result.output
