"""One ONNX op registry per opset for the whole process, instead of one per export.

Why: the dynamo exporter builds its registry of ATen -> ONNX functions again on every
``torch.onnx.export`` call, reading and parsing the source of about 500 onnxscript functions:
0.36 s of a 0.8-s export of digits' net (0.55 s the first time). The registry depends only on the
opset and the installed torch and onnxscript, and an export without a ``custom_translation_table``
(convspec never passes one) only reads it. Hand-written because torch has no public switch for it;
where its internals differ (an older or newer torch), every export builds its own, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_built: dict[tuple, Any] = {}  # (args, kwargs) of from_torchlib -> the registry it returned


def _registry_class():
    """torch's ``ONNXRegistry`` and its own ``from_torchlib`` classmethod; None where they are not there."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return None
    cls = getattr(_registration, "ONNXRegistry", None)
    original = getattr(cls, "__dict__", {}).get("from_torchlib")
    return (cls, original) if isinstance(original, classmethod) else None


@contextlib.contextmanager
def reused_registry() -> Iterator[None]:
    """Within the block, ``torch.onnx.export`` reuses the registry built by an earlier export of this process."""
    found = _registry_class()
    if found is None:
        yield
        return
    cls, original = found

    def from_torchlib(klass, *args, **kwargs):
        key = (klass, args, tuple(sorted(kwargs.items())))
        if key not in _built:
            _built[key] = original.__func__(klass, *args, **kwargs)
        return _built[key]

    cls.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        cls.from_torchlib = original
