"""Export's error type, in a leaf module so that export and quantization both raise it."""

from __future__ import annotations

from convspec.specs import ConvspecError


class ExportError(ConvspecError):
    """An export that cannot be done, or whose ONNX model does not match PyTorch."""
