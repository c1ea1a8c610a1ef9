"""The convspec spec language: Pydantic models, YAML loading with positions, static shapes.

Torch-free: validating a spec and printing its summary never imports torch.
"""

from .errors import ConvspecError, Issue, SpecError
from .layers import LAYER_TYPES, Layer
from .loader import apply_values, get_value, load_spec, load_spec_text, spec_from_dict
from .readfile import FileReadError
from .schema import json_schema, json_schema_text
from .shapes import Summary, summarize
from .spec import Spec

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
