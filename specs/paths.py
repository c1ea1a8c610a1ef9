"""Dotted paths into a spec (``model.layers.0.filters``): shared by ``--set`` and ``tune.space``."""

from __future__ import annotations

import copy
from typing import Any

from .yamlio import get_node


class PathError(ValueError):
    """A dotted path that does not lead anywhere in the document."""


def split_path(dotted: str) -> tuple:
    """``"model.layers.0.filters"`` -> ``("model", "layers", 0, "filters")``."""
    if not dotted or any(not part for part in dotted.split(".")):
        raise PathError(f"{dotted!r} is not a dotted path like training.optimizer.lr")
    parts = dotted.split(".")
    for i, p in enumerate(parts):
        if p.startswith("-") and p[1:].isdigit():
            # Why refuse: Python's "last item" reading of -1 silently changed another layer than meant.
            raise PathError(
                f"{'.'.join(parts[: i + 1])}: negative index {p}; list items are numbered from 0 "
                f"(e.g. {'.'.join(parts[:i] + ['0'] + parts[i + 1 :])})"
            )
    return tuple(int(p) if p.isdigit() else p for p in parts)


def set_path(data: Any, path: tuple, value: Any, *, create: bool = True) -> None:
    """Set ``value`` at ``path`` in nested dicts/lists, creating mappings where ``create``."""
    node = data
    for i, seg in enumerate(path):
        last = i == len(path) - 1
        where = ".".join(map(str, path[: i + 1]))
        if isinstance(node, list):
            if not isinstance(seg, int):
                raise PathError(f"{where}: {'.'.join(map(str, path[:i]))} is a list; use an index")
            if not 0 <= seg < len(node):
                raise PathError(f"{where}: index {seg} is out of range (the list has {len(node)} items)")
            if last:
                node[seg] = value
            else:
                node = node[seg]
        elif isinstance(node, dict):
            if last:
                node[seg] = value
            elif seg not in node or node[seg] is None:
                if not create:
                    raise PathError(f"{where}: no such key")
                node[seg] = {}
                node = node[seg]
            else:
                node = node[seg]
        else:
            raise PathError(
                f"{where}: {'.'.join(map(str, path[:i])) or 'the spec'} is a single value, not a mapping or list"
            )


def has_path(data: Any, path: tuple) -> bool:
    try:
        get_node(data, path)
    except KeyError:
        return False
    return True


def with_values(data: dict, values: dict[str, Any]) -> dict:
    """A deep copy of ``data`` with each dotted path set to its value."""
    out = copy.deepcopy(data)
    for dotted, value in values.items():
        set_path(out, split_path(dotted), value, create=False)
    return out
