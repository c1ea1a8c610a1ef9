"""Every layer type in the registry is documented in SPEC.md and has a valid and an invalid case."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from convspec.specs import LAYER_TYPES, SpecError, load_spec_text
from convspec.specs.yamlio import dump_yaml

SPEC_MD = Path(__file__).resolve().parents[2].parent / "shared" / "SPEC.md"

# type -> (valid layer lists, invalid (layer list, words in the issue at the last layer))
# Each list follows a (8, 16, 16) image made by a conv; the automatic head is appended.
# A valid list that starts with a backbone has no conv in front (a backbone is only ever first).
CASES: dict[str, tuple[list[list[dict]], list[tuple[list[dict], str]]]] = {
    "backbone": (
        [
            [{"type": "backbone", "name": "resnet18"}],
            [{"type": "backbone", "name": "mobilenetv3_small_100", "trainable": 2, "output": "features"}],
        ],
        [
            ([{"type": "backbone", "name": "resnet18"}], "must be the first layer"),
            ([{"type": "backbone", "name": "resnet19"}], "did you mean resnet18"),
            ([{"type": "backbone", "name": "resnet18", "trainable": 6}], "has 5 stages"),
            ([{"type": "backbone", "name": "resnet18", "output": "map"}], "pooled, features"),
        ],
    ),
    "conv": (
        [
            [{"type": "conv", "filters": 4}],
            [
                {
                    "type": "conv",
                    "filters": 4,
                    "kernel": [3, 5],
                    "stride": [2, 1],
                    "padding": 1,
                    "dilation": 2,
                    "groups": 4,
                    "bias": True,
                    "activation": "gelu",
                    "batch_norm": True,
                }
            ],
        ],
        [
            ([{"type": "conv", "filters": 0}], "greater than 0"),
            ([{"type": "conv", "filters": 4, "padding": "full"}], "same, valid"),
            ([{"type": "conv", "filters": 6, "groups": 4}], "must divide"),
        ],
    ),
    "max_pool": (
        [[{"type": "max_pool"}], [{"type": "max_pool", "size": 3, "stride": 1, "padding": 1}]],
        [
            ([{"type": "max_pool", "size": 32}], "too small"),
            ([{"type": "max_pool", "size": 2, "padding": 2}], "at most half"),
        ],
    ),
    "avg_pool": (
        [[{"type": "avg_pool", "size": [2, 4]}]],
        [
            ([{"type": "avg_pool", "stride": 0}], "greater than 0"),
            ([{"type": "flatten"}, {"type": "avg_pool"}], "needs an image input"),
        ],
    ),
    "global_avg_pool": (
        [[{"type": "global_avg_pool"}, {"type": "dense", "units": 3}]],
        [
            ([{"type": "global_avg_pool", "keepdims": True}], "unknown key 'keepdims'"),
            ([{"type": "flatten"}, {"type": "global_avg_pool"}], "needs an image input"),
        ],
    ),
    "global_max_pool": (
        [[{"type": "global_max_pool"}]],
        [([{"type": "global_max_pool", "size": 2}], "unknown key 'size'")],
    ),
    "flatten": (
        [[{"type": "flatten"}, {"type": "flatten"}]],
        [([{"type": "flatten", "start_dim": 1}], "unknown key 'start_dim'")],
    ),
    "dense": (
        [[{"type": "flatten"}, {"type": "dense", "units": 7, "activation": "relu", "bias": False, "batch_norm": True}]],
        [
            ([{"type": "dense", "units": 7}], "needs a flat input"),
            ([{"type": "flatten"}, {"type": "dense", "units": 7, "activation": "Relu"}], "did you mean 'relu'"),
            ([{"type": "flatten"}, {"type": "dense"}], "missing required key 'units'"),
        ],
    ),
    "dropout": (
        [[{"type": "dropout"}], [{"type": "dropout", "rate": 0.0}]],
        [([{"type": "dropout", "rate": 1.0}], "less than 1"), ([{"type": "dropout", "rate": "high"}], "a number")],
    ),
    "batch_norm": (
        [[{"type": "batch_norm"}], [{"type": "flatten"}, {"type": "batch_norm"}]],
        [([{"type": "batch_norm", "momentum": 0.1}], "unknown key 'momentum'")],
    ),
    "activation": (
        [[{"type": "activation", "fn": "leaky_relu"}]],
        [
            ([{"type": "activation"}], "missing required key 'fn'"),
            ([{"type": "activation", "fn": "swish"}], "must be one of"),
        ],
    ),
    "repeat": (
        [
            [
                {
                    "type": "repeat",
                    "times": 2,
                    "layers": [{"type": "conv", "filters": 8}, {"type": "dropout", "rate": 0.1}],
                }
            ]
        ],
        [
            ([{"type": "repeat", "times": 0, "layers": [{"type": "conv", "filters": 8}]}], "greater than 0"),
            ([{"type": "repeat", "times": 2, "layers": []}], "at least 1 item"),
            ([{"type": "repeat", "times": 9, "layers": [{"type": "max_pool"}]}], "too small"),
        ],
    ),
    "residual": (
        [
            [{"type": "residual", "layers": [{"type": "conv", "filters": 8}]}],
            [
                {
                    "type": "residual",
                    "activation": "none",
                    "layers": [{"type": "conv", "filters": 16, "stride": 2, "batch_norm": True}],
                }
            ],
        ],
        [
            (
                [{"type": "residual", "layers": [{"type": "conv", "filters": 8, "kernel": 5, "padding": "valid"}]}],
                "cannot be matched",
            ),
            ([{"type": "residual", "layer": [{"type": "conv", "filters": 8}]}], "did you mean 'layers'"),
        ],
    ),
}


def spec_text(layers: list[dict], conv_first: bool = True) -> str:
    data = {
        "version": 1,
        "task": "multiclass",
        "data": {"source": {"type": "builtin", "name": "digits"}},
        "input": {"channels": 1, "size": [16, 16]},
        "model": {"layers": [{"type": "conv", "filters": 8}, *layers] if conv_first else layers},
    }
    return dump_yaml(data)


def valid_spec_text(layers: list[dict]) -> tuple[str, int]:
    """A valid case's spec text, and the index of its last layer in model.layers."""
    if layers[0]["type"] == "backbone":
        return spec_text(layers, conv_first=False), len(layers) - 1
    return spec_text(layers), len(layers)


def test_cases_cover_the_registry():
    assert set(CASES) == set(LAYER_TYPES)
    for name, (valid, invalid) in CASES.items():
        assert valid and invalid, name
        assert all(layers[-1]["type"] == name for layers, _ in invalid), name


def documented_layer_types(text: str) -> set[str]:
    section = text.split("### model.layers", 1)[1].split("\n### ", 1)[0]
    types = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[1] and cells[1] not in ("type",) and not set(cells[1]) <= set("-"):
            types.update(t.strip(" `") for t in cells[1].split(","))
    return types


def test_registry_matches_the_spec_language_table():
    if not SPEC_MD.exists():
        pytest.skip(f"{SPEC_MD} is not here")
    documented = documented_layer_types(SPEC_MD.read_text("utf-8"))
    assert "conv" in documented and "residual" in documented
    assert set(LAYER_TYPES) == documented


@pytest.mark.parametrize("name", sorted(CASES))
def test_valid_cases_load_and_have_a_shape(name):
    for layers in CASES[name][0]:
        text, last = valid_spec_text(layers)
        spec = load_spec_text(text)
        summary = spec.summary()
        assert summary.output_shape == (10,)
        rows = [r for r in summary.rows if r.depth == 0 and r.path == ("model", "layers", last)]
        assert rows and rows[0].shape is not None


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_cases_are_spec_errors_at_the_layer(name):
    for layers, words in CASES[name][1]:
        with pytest.raises(SpecError) as info:
            load_spec_text(spec_text(layers), "case.yaml")
        at_layer = ("model", "layers", len(layers))
        hits = [i for i in info.value.issues if i.path[:3] == at_layer and words in i.message]
        assert hits, f"{layers}: expected {words!r} at model.layers[{len(layers)}]; got {info.value}"
        assert re.match(r"case\.yaml:\d+:\d+: model\.layers\[\d+\]", str(hits[0]))
