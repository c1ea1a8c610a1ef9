"""--set overrides, apply_values (tune trials) and the YAML round trip of a resolved spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from convspec.specs import (
    SpecError,
    apply_values,
    get_value,
    load_spec,
    load_spec_text,
    spec_from_dict,
)

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_set_overrides_apply_and_change_the_summary():
    base = load_spec(DIGITS)
    spec = load_spec(
        DIGITS, overrides=["training.epochs=5", "model.layers.0.filters=16", "training.optimizer={type: sgd, lr: 0.1}"]
    )
    assert spec.training.epochs == 5
    assert spec.model.layers[0].filters == 16
    assert spec.training.optimizer.type == "sgd" and spec.training.optimizer.lr == 0.1
    assert spec.summary().params < base.summary().params
    assert base.training.epochs == 20  # the file itself is untouched


def test_set_values_are_parsed_as_yaml_and_may_add_keys():
    spec = load_spec(
        DIGITS,
        overrides=["augment=[]", "training.grad_clip=1.5", "export.quantize=int8", "classes=[0,1,2,3,4,5,6,7,8,9]"],
    )
    assert spec.augment == [] and spec.training.grad_clip == 1.5 and spec.export.quantize == "int8"
    assert spec.classes == [str(i) for i in range(10)]
    assert load_spec(DIGITS, overrides=["tune.trials=3"]).tune.trials == 3  # a new section


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("model.layers.9.filters=3", "out of range"),
        ("training.epochs.count=1", "single value"),
        ("model.layers.x.filters=3", "use an index"),
        ("training..epochs=1", "not a dotted path"),
        ("epochs", "KEY=VALUE"),
        ("training.epochs=[1, 2", "--set training.epochs=[1, 2"),
    ],
)
def test_set_with_a_bad_path_or_value_is_a_spec_error(override, words):
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, overrides=[override])
    assert any(words in str(i) for i in info.value.issues), str(info.value)


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("training.epochs=-1", "training.epochs", "greater than 0"),
        ("model.layers.0.filters=many", "model.layers[0].filters", "must be an integer"),
        ("training.epoch=5", "training.epoch", "did you mean 'epochs'"),
        ("task=binary", "task", "exactly 2 classes"),
        ("input.size=[1, 1]", "model.layers[1] (max_pool)", "too small"),
    ],
)
def test_overridden_values_are_validated_like_the_file(override, key, words):
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, overrides=[override])
    text = str(info.value)
    assert f": {key}: " in text and words in text, text
    if key.split(".")[0] == override.split(".")[0].split("=")[0]:
        # Errors in an overridden value say which --set caused them.
        assert f"(--set {override})" in text, text


def test_apply_values_returns_a_new_validated_spec():
    spec = load_spec(DIGITS)
    trial = apply_values(spec, {"training.optimizer.lr": 0.01, "model.layers.2.filters": 16})
    assert trial.training.optimizer.lr == 0.01
    assert trial.model.layers[2].filters == 16
    assert trial.summary().params < spec.summary().params
    assert spec.training.optimizer.lr == 0.003 and spec.model.layers[2].filters == 32
    assert trial.source_file == spec.source_file
    assert get_value(trial, "model.layers.2.filters") == 16


def test_apply_values_rejects_invalid_values_and_paths():
    spec = load_spec(DIGITS)
    with pytest.raises(SpecError, match="greater than 0"):
        apply_values(spec, {"model.layers.0.filters": 0})
    with pytest.raises(SpecError, match="no such key"):
        apply_values(spec, {"training.nope.lr": 1})
    with pytest.raises(SpecError, match="out of range"):
        apply_values(spec, {"model.layers.9.filters": 8})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_to_yaml_round_trips(path: Path):
    spec = load_spec(path)
    text = spec.to_yaml()
    again = load_spec_text(text, spec.source_file, base_dir=spec.base_dir)
    assert again == spec
    assert again.to_yaml() == text
    assert load_spec_text(text).to_dict() == spec.to_dict()  # absolute paths: no base_dir needed
    assert spec_from_dict(spec.to_dict()).summary().params == spec.summary().params


def test_round_trip_keeps_explicit_choices():
    spec = load_spec(REPO / "examples" / "digits-binary.yaml")
    data = spec.to_dict()
    assert data["data"]["source"]["classes"] == ["3", "8"]
    assert data["training"]["optimizer"] == {
        "type": "adamw",
        "lr": 0.003,
        "weight_decay": 0.0001,
        "betas": [0.9, 0.999],
    }
    assert "tune" not in data  # None sections stay out


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("[1", ("flow sequence", "at character 3 of the value")),
        ("*a", ("undefined alias 'a'",)),
        ("!!python/object/apply:os.system [ls]", ("unknown YAML tag '!!python/object/apply:os.system'",)),
    ],
)
def test_a_set_value_that_is_not_yaml_is_one_line(value, words):
    """ruamel's own message is four lines, with ``in "<unicode string>"`` and a caret."""
    with pytest.raises(SpecError) as info:
        load_spec(DIGITS, overrides=[f"training.epochs={value}"])
    text = str(info.value)
    assert "\n" not in text and "<unicode string>" not in text, text
    assert f"--set training.epochs={value}" in text
    for word in words:
        assert word in text, text


def test_setting_a_key_of_a_section_the_spec_leaves_out_keeps_that_sections_default_type(tmp_path):
    """``--set training.optimizer.lr=0.01`` without an ``optimizer:`` section used to mean
    ``{lr: 0.01}``: "missing required key 'type'"."""
    text = DIGITS.read_text("utf-8")
    start = text.index("training:")
    spec = tmp_path / "s.yaml"
    spec.write_text(text[:start], "utf-8")  # no training section at all
    assert load_spec(spec, overrides=["training.optimizer.lr=0.01"]).training.optimizer.model_dump() == {
        "type": "adamw", "lr": 0.01, "weight_decay": 0.01, "betas": (0.9, 0.999)
    }  # fmt: skip
    assert load_spec(spec, overrides=["training.optimizer={type: sgd}"]).training.optimizer.type == "sgd"
