"""The JSON Schema (Draft 2020-12) that editors use agrees with the loader on the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from convspec.specs import json_schema, load_spec

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
BAD = Path(__file__).parent / "bad"
SCHEMA_CASES = sorted(p for p in BAD.glob("*.yaml") if "# schema: invalid" in p.read_text("utf-8", errors="replace"))


@pytest.fixture(scope="module")
def validator():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def plain(path: Path):
    return YAML(typ="safe", pure=True).load(path.read_text("utf-8"))


def test_schema_declares_draft_2020_12():
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) == {"version", "task", "data", "input", "model"}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_schema_accepts_every_example(validator, path: Path):
    load_spec(path)  # the loader accepts it too
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(plain(path))]
    assert not errors, "\n".join(errors)


def test_there_are_schema_cases():
    assert len(SCHEMA_CASES) >= 15


@pytest.mark.parametrize("path", SCHEMA_CASES, ids=lambda p: p.stem)
def test_schema_rejects_schema_cases(validator, path: Path):
    assert not validator.is_valid(plain(path))


def test_schema_accepts_the_shorthands_the_loader_accepts(validator):
    """``size: 32`` and numeric class names validate in both (they are the same language)."""
    data = plain(REPO / "examples" / "digits-binary.yaml")
    data["input"]["size"] = 16
    data["preprocess"] = [{"type": "center_crop", "size": 12}]
    assert validator.is_valid(data)
    assert data["data"]["source"]["classes"] == [3, 8]
