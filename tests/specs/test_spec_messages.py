"""What a user reads for a bad value: one message per mistake, from the union member it fits.

A key that takes several types (``classes: auto | [names] | N``, ``size: N | [h, w]``) fails
every member it does not fit. Only the member that took the value says what to fix; the
others' "must be ..." lines are noise, and are left out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from convspec.specs import SpecError, load_spec_text
from convspec.specs.errors import printable

DIGITS = (Path(__file__).resolve().parents[2] / "tests" / "reliability" / "digits.yaml").read_text()


def issues(old: str, new: str) -> list[str]:
    assert old in DIGITS
    with pytest.raises(SpecError) as info:
        load_spec_text(DIGITS.replace(old, new), "s.yaml")
    return [str(i) for i in info.value.issues]


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ("classes: auto", "classes: [a]", ["s.yaml:6:1: classes: must have at least 2 items (got 1)"]),
        ("classes: auto", "classes: 1", ["s.yaml:6:10: classes: must be at least 2 (got 1)"]),
        ("classes: auto", 'classes: [a, ""]', ["s.yaml:6:14: classes[1]: must not be empty"]),
        (
            "classes: auto",
            "classes: autox",
            ["s.yaml:6:10: classes: must be one of auto or a list or an integer (got 'autox'); did you mean 'auto'?"],
        ),
        # no pydantic branch label ("constrained-int") in the key
        (
            "classes: auto",
            "classes: {a: 1}",
            ["s.yaml:6:1: classes: must be one of auto or a list or an integer (got a mapping)"],
        ),
        (
            "{type: max_pool, size: 2}",
            "{type: max_pool, size: [2, x]}",
            ["s.yaml:27:34: model.layers[1].size[1]: must be an integer (got 'x')"],
        ),
        (
            "{type: max_pool, size: 2}",
            "{type: max_pool, size: [2, 2, 2]}",
            ["s.yaml:27:24: model.layers[1].size: must have at most 2 items (got 3)"],
        ),
    ],
)
def test_a_union_key_gets_the_message_of_the_member_that_took_the_value(old, new, expected):
    assert issues(old, new) == expected


@pytest.mark.parametrize(
    "name,code", [("a\\x1bb", "U+001B"), ("a\\nb", "U+000A"), ("a\\0b", "U+0000"), ("a\\x9bb", "U+009B")]
)
def test_a_class_name_with_a_control_character_is_refused_at_its_position(name, code):
    found = issues("classes: auto", f'classes: [ok, "{name}"]')
    assert len(found) == 1, found
    assert found[0].startswith("s.yaml:6:15: classes[1]: class name "), found
    assert f"holds a control character ({code}); class names must be printable" in found[0]


def test_printable_names_pass():
    text = DIGITS.replace("classes: auto", 'classes: ["1 one", "zwei\\u00e9", "三"]')
    text = text.replace("{type: builtin, name: digits}", "{type: folder, path: not/there/yet}")
    spec = load_spec_text(text, "s.yaml")
    assert spec.classes == ["1 one", "zweié", "三"]


def test_printable_escapes_control_characters_and_keeps_newlines_and_tabs():
    assert printable("a\x1b[2Jb\rc\x00d\x7f\x9b") == "a\\x1b[2Jb\\rc\\x00d\\x7f\\x9b"
    assert printable("line 1\n\tline 2 é 三") == "line 1\n\tline 2 é 三"


@pytest.mark.parametrize(
    "value,says",
    [("7", "must be at least 8 (got 7)"), ("17", "must be at most 16 (got 17)"), ('"12"', "must be an integer")],
)
def test_input_bits_stored_is_an_integer_from_8_to_16(value, says):
    (found,) = issues("resize: stretch", f"resize: stretch\n  bits_stored: {value}")
    assert found.startswith("s.yaml:16:16: input.bits_stored: ") and says in found, found
    spec = load_spec_text(DIGITS.replace("resize: stretch", "resize: stretch\n  bits_stored: 12"), "s.yaml")
    assert spec.input.bits_stored == 12


def test_validate_refuses_one_class_and_unprintable_class_names_as_train_does(tmp_path):
    """validate used to say "OK (..., 1 classes)" for data train refuses at once."""
    from convspec.specs import SpecError, load_spec

    for name in ("a", "b\nc"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "x.png").write_bytes(b"\x89PNG")
        spec = tmp_path / "s.yaml"
        spec.write_text(
            "version: 1\ntask: multiclass\ndata:\n  source: {type: folder, path: data}\n"
            "input: {channels: 1, size: [8, 8]}\nmodel: {layers: [{type: global_avg_pool}]}\n",
            "utf-8",
        )
        with pytest.raises(SpecError) as info:
            load_spec(spec)
        text = str(info.value)
        assert "data.source.path" in text
        if name == "a":
            assert "only one class folder (a) in" in text and "at least 2 classes" in text
        else:
            assert "control character" in text
