"""The convspec spec language: Pydantic models, YAML loading with positions, static shapes.

Torch-free: validating a spec and printing its summary never imports torch.

The names below load their module on first use (PEP 562). Why: the runtime and the
torch-free commands import ``convspec.specs.errors`` or ``.readfile`` for one class; building
every layer's Pydantic model for that cost ``convspec predict`` 0.15 s of its start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ConvspecError": "errors",
    "Issue": "errors",
    "SpecError": "errors",
    "FileReadError": "readfile",
    "LAYER_TYPES": "layers",
    "Layer": "layers",
    "apply_values": "loader",
    "get_value": "loader",
    "load_spec": "loader",
    "load_spec_text": "loader",
    "spec_from_dict": "loader",
    "json_schema": "schema",
    "json_schema_text": "schema",
    "Summary": "shapes",
    "summarize": "shapes",
    "Spec": "spec",
}

__all__ = [
    "FileReadError",
    "ConvspecError",
    "Issue",
    "LAYER_TYPES",
    "Layer",
    "Spec",
    "SpecError",
    "Summary",
    "apply_values",
    "get_value",
    "json_schema",
    "json_schema_text",
    "load_spec",
    "load_spec_text",
    "spec_from_dict",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:  # for type checkers and editors: the names as plain imports
    from .errors import ConvspecError, Issue, SpecError
    from .layers import LAYER_TYPES, Layer
    from .loader import apply_values, get_value, load_spec, load_spec_text, spec_from_dict
    from .readfile import FileReadError
    from .schema import json_schema, json_schema_text
    from .shapes import Summary, summarize
    from .spec import Spec
