"""Static shape, parameter and MAC inference: pure functions of the spec, no torch.

Shapes exclude the batch axis: ``(C, H, W)`` for images, ``(F,)`` for flat features.
Counting follows torchvision/fvcore: trainable parameters (batch norm: weight and bias),
MACs of conv and dense layers only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import pair
from .errors import Issue, Path, SpecError
from .layers import (
    ActivationLayer,
    AvgPool,
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
from .pipeline import CenterCrop, Crop, Grayscale, Normalize

Shape = tuple[int, ...]


class ShapeError(Exception):
    """Raised by a shape rule; turned into a SpecError at the layer's path."""


@dataclass
class Row:
    """One line of the summary table."""

    name: str
    path: Path
    depth: int
    shape: Shape | None
    params: int = 0
    macs: int = 0


@dataclass
class Summary:
    """Per-layer shapes and counts, and the totals, of a spec's model."""

    input_shape: Shape
    rows: list[Row] = field(default_factory=list)
    output_shape: Shape | None = None
    classes_note: str = ""

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows if r.depth == 0)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows if r.depth == 0)

    def __str__(self) -> str:
        lines = [f"{'layer':<34}{'output':>16}{'params':>14}{'MACs':>16}"]
        for r in self.rows:
            lines.append(f"{'  ' * r.depth + r.name:<34}{fmt_shape(r.shape):>16}{r.params:>14,}{r.macs:>16,}")
        lines.append(f"{'total':<34}{fmt_shape(self.output_shape):>16}{self.params:>14,}{self.macs:>16,}")
        if self.classes_note:
            lines.append(self.classes_note)
        return "\n".join(lines)


def fmt_shape(shape: Shape | None) -> str:
    return "?" if shape is None else "(" + ", ".join(map(str, shape)) + ")"


# ---------------------------------------------------------------- layer rules
# Each rule: (layer, input shape) -> (output shape, params, macs). One per layer type.


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


# ------------------------------------------------------------------ walking


def _infer_layers(layers, shape: Shape, path: Path, depth: int, rows: list[Row]) -> Shape:
    for i, layer in enumerate(layers):
        lpath = path + (i,)
        if isinstance(layer, Repeat):
            block = Row(f"repeat x{layer.times}", lpath, depth, None)
            rows.append(block)
            start = len(rows)
            for k in range(layer.times):
                rows.append(Row(f"copy {k + 1}", lpath, depth + 1, None))
                copy_start = len(rows)
                shape = _infer_layers(layer.layers, shape, lpath + ("layers",), depth + 2, rows)
                copy = rows[copy_start - 1]
                copy.shape = shape
                copy.params = sum(r.params for r in rows[copy_start:] if r.depth == depth + 2)
                copy.macs = sum(r.macs for r in rows[copy_start:] if r.depth == depth + 2)
            block.shape, block.params, block.macs = shape, *_sum_children(rows[start:], depth + 1)
        elif isinstance(layer, Residual):
            block = Row("residual", lpath, depth, None)
            rows.append(block)
            start = len(rows)
            out = _infer_layers(layer.layers, shape, lpath + ("layers",), depth + 1, rows)
            try:
                sc = residual_shortcut(layer, shape, out)
            except ShapeError as e:
                raise _located(e, lpath, layer.type) from None
            if sc is not None:
                rows.append(
                    Row(
                        f"shortcut 1x1/{sc.stride[0]}" + (" +bn" if sc.batch_norm else ""),
                        lpath,
                        depth + 1,
                        out,
                        sc.params,
                        sc.macs,
                    )
                )
            block.shape, block.params, block.macs = out, *_sum_children(rows[start:], depth + 1)
            shape = out
        else:
            try:
                shape, params, macs = SHAPE_RULES[type(layer)](layer, shape)
            except ShapeError as e:
                raise _located(e, lpath, layer.type) from None
            rows.append(Row(_label(layer), lpath, depth, shape, params, macs))
    return shape


def _sum_children(rows: list[Row], depth: int) -> tuple[int, int]:
    return sum(r.params for r in rows if r.depth == depth), sum(r.macs for r in rows if r.depth == depth)


def _label(layer) -> str:
    if isinstance(layer, Conv):
        k = pair(layer.kernel)
        s = pair(layer.stride)
        label = f"conv {k[0]}x{k[1]}" + (f"/{s[0]}" if s != (1, 1) else "")
        label += " +bn" if layer.batch_norm else ""
    elif isinstance(layer, Dense):
        label = "dense" + (" +bn" if layer.batch_norm else "")
    elif isinstance(layer, ActivationLayer):
        return f"activation {layer.fn}"
    else:
        label = layer.type
    act = getattr(layer, "activation", "none")
    return label + (f" {act}" if act != "none" else "")


class _Located(Exception):
    def __init__(self, message: str, path: Path, what: str = ""):
        self.message, self.path, self.what = message, path, what


def _located(e: ShapeError, path: Path, what: str = "") -> _Located:
    """A shape error at ``path``; ``what`` is the layer's type as written (``max_pool``)."""
    return _Located(str(e), path, what)


def preprocess_shape(spec) -> Shape:
    """Shape of the image after the preprocess steps (crops and grayscale change it)."""
    shape: Shape = (spec.input.channels, *spec.input.size)
    for step in spec.preprocess:
        c, h, w = shape
        if isinstance(step, Grayscale):
            shape = (1, h, w)
        elif isinstance(step, CenterCrop):
            shape = (c, *step.size)
        elif isinstance(step, Crop):
            shape = (c, step.box[2], step.box[3])
    return shape


def preprocess_issues(spec) -> list[Issue]:
    """Crops that do not fit, grayscale on one channel, normalize with the wrong length."""
    issues: list[Issue] = []
    shape: Shape = (spec.input.channels, *spec.input.size)
    for i, step in enumerate(spec.preprocess):
        c, h, w = shape
        path = ("preprocess", i)
        if isinstance(step, Grayscale):
            if c != 3:
                issues.append(Issue(f"grayscale needs 3 channels; the image has {c} here", path))
            shape = (1, h, w)
        elif isinstance(step, CenterCrop):
            ch, cw = step.size
            if ch > h or cw > w:
                issues.append(
                    Issue(
                        f"center_crop size {ch}x{cw} is larger than the image ({h}x{w}) at this step", path + ("size",)
                    )
                )
            shape = (c, ch, cw)
        elif isinstance(step, Crop):
            top, left, bh, bw = step.box
            if top + bh > h or left + bw > w:
                issues.append(
                    Issue(
                        f"crop box [top {top}, left {left}, height {bh}, width {bw}] does not fit inside the {h}x{w} "
                        f"image (needs top+height <= {h} and left+width <= {w})",
                        path + ("box",),
                    )
                )
            shape = (c, bh, bw)
        elif isinstance(step, Normalize):
            for key in ("mean", "std"):
                vals = getattr(step, key)
                if isinstance(vals, list) and len(vals) != c:
                    issues.append(
                        Issue(
                            f"needs one value per channel: {c} (input.channels is {spec.input.channels}); got "
                            f"{len(vals)}",
                            path + (key,),
                        )
                    )
    return issues


def summarize(spec) -> Summary:
    """Infer every layer's output shape, parameters and MACs, head included.

    Raises:
        SpecError: a layer would shrink the image below 1 pixel, a dense layer gets a
            non-flat input, or a residual's shapes cannot be matched; at that layer's path.
    """
    in_shape = preprocess_shape(spec)
    summary = Summary(input_shape=(spec.input.channels, *spec.input.size))
    rows = summary.rows
    if in_shape != summary.input_shape:
        rows.append(Row("preprocess", ("preprocess",), 0, in_shape))
    try:
        shape = _infer_layers(spec.model.layers, in_shape, ("model", "layers"), 0, rows)
    except _Located as e:
        raise SpecError(Issue(e.message, e.path, what=e.what)) from None
    if spec.model.head:
        units = spec.output_units()
        if len(shape) != 1:
            shape = (math.prod(shape),)
            rows.append(Row("flatten (head)", ("model",), 0, shape))
        act = "sigmoid" if spec.task == "binary" else "softmax"
        if units is None:
            summary.classes_note = (
                "classes: auto, and the data source is not readable here: the head's size is unknown and left out "
                "of the totals"
            )
            rows.append(Row(f"dense (head) {act}", ("model",), 0, None))
            shape = None
        else:
            (f,) = shape
            rows.append(Row(f"dense (head) {act}", ("model",), 0, (units,), f * units + units, f * units))
            shape = (units,)
    summary.output_shape = shape
    return summary
