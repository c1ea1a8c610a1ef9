"""Pydantic errors -> user messages: name the key, say what was expected, echo what was got."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

from .errors import Path


def got(value: Any) -> str:
    """Echo a received value the way it looks in YAML, shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict):
        text = "a mapping"
    elif isinstance(value, list):
        text = "[" + ", ".join(got(v) for v in value[:6]) + (", ..." if len(value) > 6 else "") + "]"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(word: Any, choices: list[str]) -> str:
    """`` (did you mean 'filters'?)`` or the empty string."""
    if not isinstance(word, str):
        return ""
    # Why lower(): 'Relu' should suggest 'relu', not 'elu'.
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


def describe(err: dict, valid_keys: list[str] | None) -> str:
    """One pydantic error dict as a sentence fragment (without the key path)."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    loc = err["loc"]
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    if kind == "extra_forbidden":
        keys = valid_keys or []
        hint = suggest(loc[-1], keys) or (f" (valid keys: {', '.join(keys)})" if keys else "")
        return f"unknown key {loc[-1]!r}{hint}"
    if kind == "union_tag_invalid":
        tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
        return f"unknown type {got(ctx.get('tag'))}{suggest(ctx.get('tag'), tags)}; expected one of: {', '.join(tags)}"
    if kind == "union_tag_not_found":
        return "missing required key 'type'"
    if kind == "literal_error":
        choices = [c.strip().strip("'") for c in str(ctx.get("expected", "")).replace(" or ", ", ").split(",")]
        return f"must be one of {', '.join(choices)} (got {got(value)}){suggest(value, choices)}"
    bounds = {
        "greater_than": ("greater than", "gt"),
        "greater_than_equal": ("at least", "ge"),
        "less_than": ("less than", "lt"),
        "less_than_equal": ("at most", "le"),
    }
    if kind in bounds:
        word, key = bounds[kind]
        return f"must be {word} {ctx.get(key)} (got {got(value)})"
    simple = {
        "int_type": "an integer",
        "int_parsing": "an integer",
        "int_from_float": "a whole number",
        "float_type": "a number",
        "float_parsing": "a number",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "tuple_type": "a list",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "finite_number": "a finite number",
    }
    if kind in simple:
        return f"must be {simple[kind]} (got {got(value)})"
    if kind == "too_short" and isinstance(value, str) and ctx.get("min_length") == 1:
        return "must not be empty"  # Why: a string behind a BeforeValidator gets the generic length error
    if kind in ("too_short", "too_long"):
        n = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        word = "at least" if kind == "too_short" else "at most"
        return f"must have {word} {n} item{'s' if n != 1 else ''} (got {ctx.get('actual_length', got(value))})"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')} (got {got(value)})"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", err.get("msg")))
    if kind == "int_parsing_size":  # pydantic's "Unable to parse input string as an integer, exceeded maximum size"
        return f"must be a number of a sensible size (got {got(value)})"
    return f"{err.get('msg', kind)} (got {got(value)})"


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [_unwrap(a) for a in typing.get_args(tp)]
    return [tp]


def model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """Follow a pydantic error location (tags included) to the model class it lands in."""
    tp: Any = root
    for seg in loc:
        nxt = None
        for m in _members(tp):
            if isinstance(m, type) and issubclass(m, BaseModel):
                if isinstance(seg, str):
                    for name, f in m.model_fields.items():
                        if seg in (name, f.alias):
                            nxt = f.annotation
                    if nxt is None and "type" in m.model_fields:
                        lit = typing.get_args(m.model_fields["type"].annotation)
                        if seg in lit:
                            nxt = m
            else:
                origin, args = typing.get_origin(m), typing.get_args(m)
                if origin in (list, tuple) and isinstance(seg, int) and args:
                    nxt = (
                        args[0]
                        if origin is list or len(args) == 1 or args[-1] is Ellipsis
                        else args[min(seg, len(args) - 1)]
                    )
                elif origin is dict and args:
                    nxt = args[1]
            if nxt is not None:
                break
        if nxt is None:
            return None
        tp = nxt
    for m in _members(tp):
        if isinstance(m, type) and issubclass(m, BaseModel):
            return m
    return None


def valid_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    model = model_at(root, loc[:-1])
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items() if n != "type"]


def doc_path(data: Any, loc: tuple) -> Path:
    """Drop the segments of a pydantic location that are not in the document (union tags)."""
    path: list = []
    node = data
    for i, seg in enumerate(loc):
        if isinstance(node, dict) and seg in node:
            path.append(seg)
            node = node[seg]
        elif isinstance(node, dict) and node.get("type") == seg:
            continue  # the discriminator tag of a union member
        elif isinstance(node, list) and isinstance(seg, int):
            path.append(seg)
            node = node[seg] if 0 <= seg < len(node) else None
        elif i == len(loc) - 1 and isinstance(node, dict) and not _is_branch_label(seg):
            path.append(seg)  # a missing or extra key: keep it, the position falls back to the parent
        else:
            continue
    return tuple(path)


# How pydantic names union members and wrapped schemas in an error's location.
_BRANCH_PREFIXES = (
    *("function-", "literal", "tuple", "list", "dict", "int", "float", "str", "bool", "union"),
    *("constrained-", "nullable", "lax-or-strict", "json-or-python", "is-instance"),
)


def _is_branch_label(seg: Any) -> bool:
    return isinstance(seg, str) and ("[" in seg or seg.startswith(_BRANCH_PREFIXES))
