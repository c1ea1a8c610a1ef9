"""spec -> torch module -> trained run -> ONNX. The API is loaded lazily (PEP 562).

Why lazy: ``convspec validate`` and ``summary`` live in this package's CLI and must start
without paying for ``import torch``.
"""

from __future__ import annotations

import importlib

_API = {
    "build_model": "convspec.compiler.model.builder",
    "train": "convspec.compiler.training.loop",
    "export_onnx": "convspec.compiler.export.onnx",
    "tune": "convspec.compiler.tuning.study",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'convspec.compiler' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
