"""Reading a run's ``results.json``: the JSON, then the types of the keys that its readers use.

Torch-free. ``compare``, ``export`` (which rewrites report.md from it), ``--folds`` and ``tune``
read it; a hand-edited or damaged file (``"test": {"metrics": "x"}``) is refused here in one line
naming the key, instead of failing deep inside a reader with ``'str' object has no attribute``.
Every key is optional (an interrupted run has none of them) and unknown keys are kept.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from convspec.specs.errors import format_path
from convspec.specs.readfile import FileReadError, read_json

__all__ = ["read_results"]

# Why strict: lax pydantic took "0.5" for a float and True for 1, so a hand-edited file passed the
# check and a reader then showed "-" or averaged True as 1 (ints are floats still).
Number = StrictFloat | StrictInt | None  # null and NaN: a metric that could not be computed
Count = StrictInt


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class _ClassScores(_Loose):
    precision: Number = None
    recall: Number = None
    f1: Number = None
    support: Count = 0


class _PerClass(_Loose):
    classes: dict[str, _ClassScores] = {}
    confusion: list[list[Count]] = []


class _Mistake(_Loose):
    file: StrictStr
    true: StrictStr
    predicted: StrictStr
    probability: Number


class _Test(_Loose):
    loss: Number = None
    metrics: dict[str, Number] = {}
    per_class: _PerClass = _PerClass()
    mistakes: list[_Mistake] = []


class _Threshold(_Loose):
    value: Annotated[StrictFloat | StrictInt, Field(ge=0, le=1, allow_inf_nan=False)]
    rule: Any = None
    validation: dict[str, Number] | None = None
    test: dict[str, Number] | None = None
    missed: StrictStr | None = None


class _Timings(_Loose):
    data_s: Number = None
    train_s: Number = None
    images_per_s: Number = None


class _Export(_Loose):
    file: StrictStr
    images: Count
    top1_agreement: Number
    max_abs_diff: Number
    int8: dict[str, Any] | None = None


class _Normalized(_Loose):
    preprocess: Count
    mean: list[StrictFloat | StrictInt]
    std: list[StrictFloat | StrictInt]


class _Results(_Loose):
    name: StrictStr | None = None
    task: StrictStr | None = None
    classes: list[StrictStr] | None = None
    counts: dict[str, dict[str, Count]] | None = None
    bad_files: list[Any] | None = None
    epochs: Count | None = None
    epochs_run: Count | None = None
    best_epoch: Count | None = None
    stopped_early: StrictBool | None = None
    monitor: StrictStr | None = None
    device: StrictStr | None = None
    precision: StrictStr | None = None
    timings: _Timings | None = None
    test: _Test | None = None
    threshold: _Threshold | StrictFloat | StrictInt | None = None
    normalize: list[_Normalized] | None = None
    init: dict[str, Any] | None = None
    export: _Export | None = None


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """``results.json`` as a dict, its keys' types checked (the JSON itself, not a copy).

    Raises:
        FileReadError: missing, not a regular file, not JSON, not an object, or a key of the
            wrong type (``results.json: test.metrics: expected a mapping (got str)``).
    """
    doc = read_json(path, "json")
    if not isinstance(doc, dict):
        raise FileReadError(os.fspath(path), f"expected a JSON object, got {type(doc).__name__}")
    try:
        _Results.model_validate(doc)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        got = type(err.get("input")).__name__
        where = format_path(_doc_path(doc, err["loc"]))
        raise FileReadError(
            os.fspath(path), f"{where}: {_expected(err)} (got {got}); not a convspec results file"
        ) from None
    return doc


def _doc_path(doc: Any, loc: tuple) -> tuple:
    """``loc`` without pydantic's union-member names (``test.metrics.accuracy.float``): only the keys
    and indexes that the document has."""
    out, node = [], doc
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            continue
        out.append(part)
    return tuple(out)


_EXPECTED = {
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
    "float_type": "expected a number",
    "int_type": "expected a whole number",
    "string_type": "expected text",
    "bool_type": "expected true or false",
    "finite_number": "expected a finite number",
    "missing": "a key is missing",
}


def _expected(err: dict) -> str:
    if err["type"] == "missing":
        return f"{err['loc'][-1]!r} is missing"
    return _EXPECTED.get(err["type"]) or err["msg"][:1].lower() + err["msg"][1:]
