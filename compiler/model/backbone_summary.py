"""``convspec summary`` for a backbone outside the shipped table: measure it with torch and timm.

Torch-free to import; torch and timm are imported only when the spec's backbone is not in the
table and both are installed.
"""

from __future__ import annotations

import importlib.util

from convspec.specs.backbone_rules import first_backbone
from convspec.specs.backbones import lookup
from convspec.specs.shapes import preprocess_shape


def measured_backbones(spec) -> dict | None:
    """``{name: BackboneInfo}`` measured with torch, or None (in the table, or torch/timm not installed).

    Raises:
        BackboneError: timm does not know the name (with close matches).
    """
    layer = first_backbone(spec)
    if layer is None:
        return None
    c, h, w = preprocess_shape(spec)
    info = lookup(layer.name)
    if info is not None and c in info.stage_params:
        return None
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("timm") is None:
        return None
    from .backbone import probe

    return {layer.name: probe(layer.name, c, (h, w))}
