"""A Spec object from Python: checked again as its file would be, and equal to itself reloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from convspec.specs import SpecError, load_spec, load_spec_text, spec_from_dict
from convspec.specs.loader import revalidate

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits.yaml"


def test_revalidate_refuses_what_the_file_would_and_names_the_file_without_a_line():
    spec = load_spec(DIGITS)
    bad = spec.model_copy(update={"training": spec.training.model_copy(update={"epochs": 0})})
    with pytest.raises(SpecError) as e:
        revalidate(bad)
    assert str(e.value) == f"{DIGITS}: training.epochs: must be greater than 0 (got 0)"
    spec.input.size = [12, "x"]  # attribute assignment does not validate either
    with pytest.raises(SpecError, match=r"input\.size\[1\]: must be an integer \(got .x.\)"):
        revalidate(spec)


def test_revalidate_applies_overrides_and_keeps_a_valid_spec_as_it_is():
    spec = load_spec(DIGITS)
    again = revalidate(spec)
    assert again == spec and again.source_file == spec.source_file and again.base_dir == spec.base_dir
    assert revalidate(spec, ["training.epochs=3"]).training.epochs == 3
    assert load_spec(DIGITS, overrides="training.epochs=4").training.epochs == 4  # one, not its characters
    with pytest.raises(SpecError, match=r"\(--set training.epochs=-1\): training.epochs"):
        revalidate(spec, ["training.epochs=-1"])


def test_a_spec_equals_itself_reloaded_from_its_yaml_or_dict():
    spec = load_spec(DIGITS)
    assert spec == load_spec_text(spec.to_yaml()) == spec_from_dict(spec.to_dict())
    assert spec != load_spec(DIGITS, ["training.epochs=3"])
