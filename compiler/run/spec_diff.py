"""The difference of two specs as YAML lines, and which lines a resumed run may change.

Shared by ``--resume`` (a given spec may change only epochs and device) and export (a run's
``spec.yaml`` must say what its checkpoint says, up to the same keys). Torch-free.
"""

from __future__ import annotations

import difflib

from convspec.specs import Spec

RESUMABLE = ("epochs:", "device:")  # keys (as YAML lines) a resumed run may change


def spec_diff(old: Spec, new: Spec, old_name: str = "run", new_name: str = "given") -> list[str]:
    """The changed lines of ``new.to_yaml()`` against ``old.to_yaml()``: ``-old`` / ``+new``, no context."""
    a, b = old.to_yaml().splitlines(), new.to_yaml().splitlines()
    lines = difflib.unified_diff(a, b, old_name, new_name, lineterm="", n=0)
    return [d for d in lines if d[:1] in "+-" and d[:3] not in ("+++", "---")]


def beyond_resumable(diff: list[str]) -> list[str]:
    """The lines of ``diff`` that change something other than epochs or device."""
    return [d for d in diff if not d[1:].strip().startswith(RESUMABLE)]
