"""JSON Schema of the spec language, for editors (yaml-language-server, VS Code)."""

from __future__ import annotations

import json

from .spec import Spec

SCHEMA_ID = "https://convspec.dev/schema/v1.json"


def json_schema() -> dict:
    schema = Spec.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "convspec spec"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"
