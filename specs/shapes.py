"""Static shape, parameter and MAC inference: pure functions of the spec, no torch.

Shapes exclude the batch axis: ``(C, H, W)`` for images, ``(F,)`` for flat features.
Counting follows torchvision/fvcore: trainable parameters (batch norm: weight and bias),
MACs of conv and dense layers only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .backbones import BackboneInfo, lookup
from .base import pair
from .errors import Issue, Path, SpecError, format_path
from .layers import (
    ActivationLayer,
    Backbone,
    Conv,
    Dense,
    Dropout,
    Repeat,
    Residual,
)
from .pipeline import CenterCrop, Crop, Denoise, Grayscale, Normalize
from .shape_rules import (
    SHAPE_RULES,
    Shape,
    ShapeError,
    UnknownShape,
    backbone_label,
    backbone_rule,
    fmt_shape,
    residual_shortcut,
)


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
                    grey = next((j for j, s in enumerate(spec.preprocess[:i]) if isinstance(s, Grayscale)), None)
                    why = f"input.channels is {c}" if grey is None else f"after preprocess[{grey}] grayscale"
                    issues.append(Issue(f"needs one value per channel: {c} ({why}); got {len(vals)}", path + (key,)))
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
