"""Reading a run's ``results.json``: the JSON, then the types of the keys that its readers use.

Torch-free. ``compare``, ``export`` (which rewrites report.md from it), ``--folds`` and ``tune``
read it; a hand-edited or damaged file (``"test": {"metrics": "x"}``) is refused here in one line
naming the key, instead of failing deep inside a reader with ``'str' object has no attribute``.
Every key is optional (an interrupted run has none of them) and unknown keys are kept.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from convspec.specs.errors import format_path
from convspec.specs.readfile import FileReadError, read_json

__all__ = ["read_results"]

Number = float | None  # NaN and null are a metric that could not be computed


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Test(_Loose):
    loss: Number = None
    metrics: dict[str, Number] = {}
    per_class: dict[str, Any] = {}
    mistakes: list[dict[str, Any]] = []


class _Results(_Loose):
    name: str | None = None
    task: str | None = None
    classes: list[str] | None = None
    counts: dict[str, dict[str, int]] | None = None
    bad_files: list[Any] | None = None
    epochs: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    stopped_early: bool | None = None
    device: str | None = None
    precision: str | None = None
    timings: dict[str, Number] | None = None
    test: _Test | None = None
    threshold: dict[str, Any] | float | None = None
    normalize: list[dict[str, Any]] | None = None
    init: dict[str, Any] | None = None
    export: dict[str, Any] | None = None


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
        raise FileReadError(
            os.fspath(path),
            f"{format_path(tuple(err['loc']))}: {_expected(err)} (got {got}); not a convspec results file",
        ) from None
    return doc


def _expected(err: dict) -> str:
    kind = err["type"]
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "expected a mapping"
    if kind == "list_type":
        return "expected a list"
    return err["msg"][:1].lower() + err["msg"][1:]
