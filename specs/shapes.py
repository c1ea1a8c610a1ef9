"""Static shape, parameter and MAC inference: pure functions of the spec, no torch.

Shapes exclude the batch axis: ``(C, H, W)`` for images, ``(F,)`` for flat features.
Counting follows torchvision/fvcore: trainable parameters (batch norm: weight and bias),
MACs of conv and dense layers only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .backbones import BackboneInfo, lookup
from .base import pair
from .errors import Issue, Path, SpecError, format_path
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
from .pipeline import CenterCrop, Crop, Denoise, Grayscale, Normalize

Shape = tuple[int, ...]


class ShapeError(Exception):
    """Raised by a shape rule; turned into a SpecError at the layer's path."""


class UnknownShape(Exception):
    """A backbone outside the table, without torch: the shapes from here on are not known."""


@dataclass
class Row:
    """One line of the summary table."""

    name: str
    path: Path
    depth: int
    shape: Shape | None
    params: int = 0
    macs: int = 0
    frozen: int = 0  # of ``params``, those that do not train (a frozen backbone or its early stages)


@dataclass
class Summary:
    """Per-layer shapes and counts, and the totals, of a spec's model."""

    input_shape: Shape
    rows: list[Row] = field(default_factory=list)
    output_shape: Shape | None = None
    classes_note: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        """All parameters (trainable and frozen)."""
        return sum(r.params for r in self.rows if r.depth == 0)

    @property
    def frozen(self) -> int:
        """Parameters that do not train (``trainable: false`` or ``N`` on a backbone)."""
        return sum(r.frozen for r in self.rows if r.depth == 0)

    @property
    def trainable(self) -> int:
        return self.params - self.frozen

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows if r.depth == 0)

    def __str__(self) -> str:
        frozen = any(r.frozen for r in self.rows)
        fz = f"{'frozen':>14}" if frozen else ""
        lines = [f"{'layer':<34}{'output':>16}{'params':>14}{fz}{'MACs':>16}"]
        for r in self.rows:
            fz = f"{r.frozen:>14,}" if frozen else ""
            lines.append(f"{'  ' * r.depth + r.name:<34}{fmt_shape(r.shape):>16}{r.params:>14,}{fz}{r.macs:>16,}")
        fz = f"{self.frozen:>14,}" if frozen else ""
        lines.append(f"{'total':<34}{fmt_shape(self.output_shape):>16}{self.params:>14,}{fz}{self.macs:>16,}")
        if frozen:
            lines.append(f"trainable parameters: {self.trainable:,} of {self.params:,}")
        lines.extend(self.notes)
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


# ------------------------------------------------------------------ walking


def _infer_layers(layers, shape: Shape, path: Path, depth: int, rows: list[Row], measured=None) -> Shape:
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
        elif isinstance(layer, Backbone):
            info = lookup(layer.name, measured)
            try:
                out, params, macs, frozen = backbone_rule(layer, shape, info)
            except ShapeError as e:
                raise _located(e, lpath) from None
            except UnknownShape:
                rows.append(Row(backbone_label(layer, None), lpath, depth, None))
                raise _Unknown(layer, i) from None
            shape = out
            rows.append(Row(backbone_label(layer, info), lpath, depth, shape, params, macs, frozen))
        else:
            try:
                shape, params, macs = SHAPE_RULES[type(layer)](layer, shape)
            except ShapeError as e:
                raise _located(e, lpath, layer.type) from None
            rows.append(Row(_label(layer), lpath, depth, shape, params, macs))
    return shape


class _Unknown(Exception):
    def __init__(self, layer: Backbone, index: int):
        self.layer, self.index = layer, index


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
    """Crops that do not fit, grayscale on one channel, normalize with the wrong length, a denoise
    kernel wider than the image (its reflect padding needs ``kernel // 2 < min(h, w)``)."""
    issues: list[Issue] = []
    shape: Shape = (spec.input.channels, *spec.input.size)
    for i, step in enumerate(spec.preprocess):
        c, h, w = shape
        path = ("preprocess", i)
        if isinstance(step, Denoise) and step.kernel // 2 >= min(h, w):
            issues.append(
                Issue(
                    f"denoise kernel {step.kernel} is too large for the {h}x{w} image at this step (needs kernel "
                    f"// 2 < {min(h, w)})",
                    path + ("kernel",),
                )
            )
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


def summarize(spec, measured: dict[str, BackboneInfo] | None = None) -> Summary:
    """Infer every layer's output shape, parameters and MACs, head included.

    A backbone outside the shipped table is measured with torch by the caller (``measured``,
    as ``convspec summary`` does); without it, the shapes from the backbone on are unknown
    (``None``) and a note says so.

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
        shape = _infer_layers(spec.model.layers, in_shape, ("model", "layers"), 0, rows, measured)
    except _Located as e:
        raise SpecError(Issue(e.message, e.path, what=e.what)) from None
    except _Unknown as e:
        summary.notes.append(
            f"backbone {e.layer.name!r} is not in convspec's table: its shapes and counts need torch "
            "(`convspec summary` measures them with timm where torch is installed)"
        )
        for j, layer in enumerate(spec.model.layers[e.index + 1 :], e.index + 1):
            rows.append(Row(layer.type, ("model", "layers", j), 0, None))
        if spec.model.head:
            rows.append(Row("dense (head)", ("model",), 0, None))
        return summary
    _backbone_notes(spec, summary, measured)
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
    else:
        _check_own_head(spec, shape)
    _check_batch_norm(spec, rows)
    summary.output_shape = shape
    return summary


def _check_batch_norm(spec, rows: list[Row]) -> None:
    """``training.batch_size: 1`` with a batch norm over one value per channel (flat features or 1x1
    maps): torch cannot train it (over one image there is nothing to normalize)."""
    if spec.training.batch_size != 1:
        return
    for r in rows:
        if (
            (" +bn" in r.name or r.name.startswith("batch_norm"))
            and r.shape is not None
            and math.prod(r.shape[1:]) == 1
        ):
            raise SpecError(
                Issue(
                    f"1 cannot train the batch norm of {format_path(r.path)} ({r.name}, output {r.shape}): over one "
                    "image it has one value per channel to normalize; use a batch size of 2 or more",
                    ("training", "batch_size"),
                )
            )


def _last_acting(layers, path: Path):
    """The last layer that changes values (past dropout and ``activation: none``, into repeats), and its path."""
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if isinstance(layer, Repeat):
            found, at = _last_acting(layer.layers, path + (i, "layers"))
            if found is not None:
                return found, at
        elif not isinstance(layer, Dropout) and not (isinstance(layer, ActivationLayer) and layer.fn == "none"):
            return layer, path + (i,)
    return None, path


def _check_own_head(spec, shape: tuple[int, ...]) -> None:
    """``model.head: false``: the last layer gives the logits, flat, 1 (binary) or one per class.

    Why refuse a final softmax/sigmoid: the model adds it (training uses the logits), so a spec's own
    would be applied twice and the loss would see probabilities as logits.
    """
    layers = spec.model.layers
    where: Path = ("model", "layers", len(layers) - 1) if layers else ("model", "layers")
    last = layers[-1] if layers else None
    while isinstance(last, Repeat):  # its last layer is the model's last
        where, last = where + ("layers", len(last.layers) - 1), last.layers[-1]
    acting, at = _last_acting(layers, ("model", "layers"))
    act = acting.fn if isinstance(acting, ActivationLayer) else getattr(acting, "activation", "none")
    if act in ("softmax", "sigmoid"):
        raise SpecError(
            Issue(
                f"with model.head: false the last layer gives the logits, and the model adds the "
                f"{'sigmoid' if spec.task == 'binary' else 'softmax'} itself; remove this {act}",
                at + (("fn",) if isinstance(acting, ActivationLayer) else ("activation",)),
            )
        )
    units = spec.output_units()
    wanted = "1 value (the binary logit)" if spec.task == "binary" else f"{units} values, one per class"
    if len(shape) != 1:
        raise SpecError(
            Issue(
                f"with model.head: false the last layer gives the logits: {wanted if units else 'a flat output'}; "
                f"it gives shape {shape} (end with a dense layer or a global pool)",
                where,
            )
        )
    if units is not None and shape[0] != units:
        raise SpecError(
            Issue(
                f"with model.head: false the last layer gives the logits: {wanted}; it gives {shape[0]}",
                where + (("units",) if isinstance(last, Dense) else ()),
            )
        )


def _backbone_notes(spec, summary: Summary, measured) -> None:
    layers = spec.model.layers
    if not layers or not isinstance(layers[0], Backbone):
        return
    info = lookup(layers[0].name, measured)
    if info is None:
        return
    h, w = preprocess_shape(spec)[1:]
    if info.source == "torch":
        summary.notes.append(f"backbone {layers[0].name}: measured with torch and timm (not in convspec's table)")
    elif (h, w) != tuple(info.macs_size):
        mh, mw = info.macs_size
        summary.notes.append(
            f"backbone {layers[0].name}: MACs scaled by pixel count from timm's count at {mh}x{mw} (approximate)"
        )
