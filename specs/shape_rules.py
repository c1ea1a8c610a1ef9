"""The shape rules: one per layer type, (layer, input shape) -> (output shape, params, MACs), in one
registry (:data:`SHAPE_RULES`), and the residual block's shortcut. Pure functions, no torch.

:mod:`.shapes` walks a spec's layers with them; the compiler's builders (``compiler/model/layers.py``)
check their modules against the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .backbones import BackboneInfo, lookup
from .base import pair
from .layers import (
    ActivationLayer,
    AvgPool,
    Backbone,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    MaxPool,
    Repeat,
    Residual,
)

Shape = tuple[int, ...]


class ShapeError(Exception):
    """Raised by a shape rule; turned into a SpecError at the layer's path."""


class UnknownShape(Exception):
    """A backbone outside the table, without torch: the shapes from here on are not known."""


def fmt_shape(shape: Shape | None) -> str:
    return "?" if shape is None else "(" + ", ".join(map(str, shape)) + ")"


def _need_image(shape: Shape, what: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ShapeError(f"{what} needs an image input (C, H, W); got flat features {fmt_shape(shape)}")
    return shape  # type: ignore[return-value]


def conv_out(size: int, k: int, s: int, d: int, padding: str | int) -> int:
    """Output length of one conv axis; ``same`` follows Keras: ceil(size / stride)."""
    if padding == "same":
        return math.ceil(size / s)
    p = 0 if padding == "valid" else int(padding)
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def same_padding(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """Keras/TensorFlow ``same`` padding for one axis: (before, after); extra goes after."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _check_positive(h: int, w: int, detail: str) -> None:
    if h < 1 or w < 1:
        raise ShapeError(
            f"output would be {h}x{w} pixels ({detail}); the image is too small here: use less downsampling, 'same' "
            "padding or a larger input.size"
        )


def conv_rule(layer: Conv, shape: Shape):
    c, h, w = _need_image(shape, "conv")
    (kh, kw), (sh, sw), (dh, dw) = pair(layer.kernel), pair(layer.stride), pair(layer.dilation)
    if c % layer.groups or layer.filters % layer.groups:
        raise ShapeError(
            f"groups ({layer.groups}) must divide both the input channels ({c}) and filters ({layer.filters})"
        )
    oh, ow = conv_out(h, kh, sh, dh, layer.padding), conv_out(w, kw, sw, dw, layer.padding)
    _check_positive(oh, ow, f"input {h}x{w}, kernel {kh}x{kw}, stride {sh}x{sw}, padding {layer.padding}")
    per_out = (c // layer.groups) * kh * kw
    params = layer.filters * per_out + (layer.filters if layer.use_bias else 0)
    params += 2 * layer.filters if layer.batch_norm else 0
    return (layer.filters, oh, ow), params, oh * ow * layer.filters * per_out


def pool_rule(layer: MaxPool | AvgPool, shape: Shape):
    c, h, w = _need_image(shape, layer.type)
    (kh, kw) = pair(layer.size)
    (sh, sw) = pair(layer.stride if layer.stride is not None else layer.size)
    if layer.padding > min(kh, kw) // 2:
        raise ShapeError(f"padding must be at most half the pool size ({min(kh, kw) // 2}); got {layer.padding}")
    oh, ow = conv_out(h, kh, sh, 1, layer.padding), conv_out(w, kw, sw, 1, layer.padding)
    _check_positive(oh, ow, f"input {h}x{w}, pool {kh}x{kw}, stride {sh}x{sw}")
    return (c, oh, ow), 0, 0


def global_pool_rule(layer, shape: Shape):
    c, _, _ = _need_image(shape, layer.type)
    return (c,), 0, 0


def flatten_rule(layer: Flatten, shape: Shape):
    return (math.prod(shape),), 0, 0


def dense_rule(layer: Dense, shape: Shape):
    if len(shape) != 1:
        raise ShapeError(
            f"dense needs a flat input; got {fmt_shape(shape)}: add {{type: flatten}} or {{type: global_avg_pool}} "
            "before it"
        )
    (f,) = shape
    params = f * layer.units + (layer.units if layer.bias else 0) + (2 * layer.units if layer.batch_norm else 0)
    return (layer.units,), params, f * layer.units


def identity_rule(layer, shape: Shape):
    return shape, 0, 0


def batch_norm_rule(layer: BatchNorm, shape: Shape):
    return shape, 2 * shape[0], 0


SHAPE_RULES: dict[type, Callable] = {
    Conv: conv_rule,
    MaxPool: pool_rule,
    AvgPool: pool_rule,
    GlobalAvgPool: global_pool_rule,
    GlobalMaxPool: global_pool_rule,
    Flatten: flatten_rule,
    Dense: dense_rule,
    Dropout: identity_rule,
    ActivationLayer: identity_rule,
    BatchNorm: batch_norm_rule,
}


def backbone_rule(layer: Backbone, shape: Shape, info: BackboneInfo | None = None):
    """Shape, parameters, MACs and frozen parameters of a backbone, from the table (or ``info``)."""
    c, h, w = _need_image(shape, "backbone")
    info = info or lookup(layer.name)
    if info is None or c not in info.stage_params:
        raise UnknownShape(layer.name)
    if layer.output == "features" and info.feature_channels is None:
        raise ShapeError(f"{layer.name} has no image feature map; use output: pooled")
    if info.reduction is not None:
        fh, fw = info.feature_hw(h, w)
        if fh < 1 or fw < 1:
            raise ShapeError(
                f"{layer.name} needs an input of at least {info.reduction}x{info.reduction} pixels (it divides the "
                f"size by {info.reduction}); the image is {h}x{w} here: use a larger input.size"
            )
    out = info.out_shape(layer.output, h, w)
    params = info.params(c, layer.output)
    frozen = min(info.frozen_params(c, layer.trainable, layer.output), params)
    return out, params, info.macs_at(c, h, w, layer.output), frozen


def backbone_label(layer: Backbone, info: BackboneInfo | None) -> str:
    label = f"backbone {layer.name}"
    if layer.output == "features":
        label += " features"
    if layer.trainable is False:
        label += " (frozen)"
    elif layer.trainable is not True:
        label += f" (last {layer.trainable} stages train)"
    return label


def shortcut_stride(in_size: int, out_size: int) -> int | None:
    """Stride s of a 1x1 conv taking ``in_size`` to ``out_size``, or None if there is none."""
    for s in range(1, in_size + 1):
        if (in_size - 1) // s + 1 == out_size:
            return s
    return None


def uses_batch_norm(layers) -> bool:
    for layer in layers:
        if isinstance(layer, Conv) and layer.batch_norm:
            return True
        if isinstance(layer, (Repeat, Residual)) and uses_batch_norm(layer.layers):
            return True
    return False


@dataclass(frozen=True)
class Shortcut:
    """The projection of a residual block whose body changes the shape."""

    in_channels: int
    out_channels: int
    stride: tuple[int, int]
    batch_norm: bool
    out_hw: tuple[int, int]

    @property
    def params(self) -> int:
        return self.in_channels * self.out_channels + (2 * self.out_channels if self.batch_norm else 0)

    @property
    def macs(self) -> int:
        return self.out_hw[0] * self.out_hw[1] * self.out_channels * self.in_channels


def residual_shortcut(layer: Residual, in_shape: Shape, out_shape: Shape) -> Shortcut | None:
    """None when f keeps the shape; else the 1x1 conv (+BN) that matches it (ResNet option B)."""
    if in_shape == out_shape:
        return None
    if len(in_shape) != 3 or len(out_shape) != 3:
        raise ShapeError(
            f"residual body changes the shape from {fmt_shape(in_shape)} to {fmt_shape(out_shape)}; only image shapes "
            "can be matched by a 1x1 conv shortcut"
        )
    sh, sw = shortcut_stride(in_shape[1], out_shape[1]), shortcut_stride(in_shape[2], out_shape[2])
    if sh is None or sw is None:
        raise ShapeError(
            f"residual shapes cannot be matched: input {fmt_shape(in_shape)}, body output {fmt_shape(out_shape)}; no "
            f"1x1 conv stride maps {in_shape[1]}x{in_shape[2]} to {out_shape[1]}x{out_shape[2]}"
        )
    return Shortcut(in_shape[0], out_shape[0], (sh, sw), uses_batch_norm(layer.layers), (out_shape[1], out_shape[2]))
