"""Layer builders: one function per layer-spec class, registered in ``BUILDERS``.

A builder takes ``(layer_spec, in_shape)`` and returns ``(module, out_shape)``. Shapes
exclude the batch axis: ``(C, H, W)`` for images, ``(F,)`` for flat features. Every
output shape comes from the torch-free rules in :mod:`convspec.specs.shapes`, so the
built module and ``spec.summary()`` agree by construction (a test checks them against
real forward passes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from convspec.specs.base import pair
from convspec.specs.errors import Issue, SpecError
from convspec.specs.layers import (
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
from convspec.specs.shape_rules import SHAPE_RULES, ShapeError, residual_shortcut, same_padding

from .backbone import build_backbone

Shape = tuple[int, ...]
Builder = Callable[..., tuple[nn.Module, Shape]]

BUILDERS: dict[type, Builder] = {}


def register(spec_cls: type) -> Callable[[Builder], Builder]:
    """Register the decorated function as the builder of ``spec_cls``.

    Raises:
        ValueError: ``spec_cls`` already has a builder.
    """

    def deco(fn: Builder) -> Builder:
        if spec_cls in BUILDERS:
            raise ValueError(f"{spec_cls.__name__} already has a builder ({BUILDERS[spec_cls].__name__})")
        BUILDERS[spec_cls] = fn
        return fn

    return deco


# ---------------------------------------------------------------- activations

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "softmax": lambda: nn.Softmax(dim=1),
    "none": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module for a spec activation name (``none``: Identity)."""
    return ACTIVATIONS[name]()


# ------------------------------------------------------------------ helpers


def _rule(layer, in_shape: Shape) -> Shape:
    """Output shape from the spec's own shape rule; a ShapeError becomes a SpecError."""
    try:
        out, _, _ = SHAPE_RULES[type(layer)](layer, in_shape)
    except ShapeError as e:
        raise SpecError(Issue(f"{layer.type}: {e}")) from None
    return out


def build_layers(layers, in_shape: Shape) -> tuple[nn.Sequential, Shape]:
    """Build a list of layer specs in order.

    Args:
        layers: layer specs (members of the ``convspec.specs.Layer`` union).
        in_shape: shape of the input, batch axis excluded.

    Returns:
        ``(nn.Sequential of the built layers, output shape)``.
    """
    mods: list[nn.Module] = []
    shape = in_shape
    for layer in layers:
        try:
            builder = BUILDERS[type(layer)]
        except KeyError:
            raise SpecError(Issue(f"no builder for layer type {layer.type!r}")) from None
        mod, shape = builder(layer, shape)
        mods.append(mod)
    return nn.Sequential(*mods), shape


# ------------------------------------------------------------------ builders


@register(Conv)
def build_conv(layer: Conv, in_shape: Shape) -> tuple[nn.Module, Shape]:
    """conv -> batch_norm -> activation; ``same`` padded as Keras does (extra pixel after)."""
    out = _rule(layer, in_shape)
    c, h, w = in_shape
    (kh, kw), (sh, sw), (dh, dw) = pair(layer.kernel), pair(layer.stride), pair(layer.dilation)
    pad: nn.Module = nn.Identity()
    if layer.padding == "same":
        (top, bottom), (left, right) = same_padding(h, kh, sh, dh), same_padding(w, kw, sw, dw)
        if top == bottom and left == right:
            conv_pad: tuple[int, int] | int = (top, left)
        else:
            # Why: torch's padding= is symmetric; Keras puts the odd pixel after (bottom/right).
            pad, conv_pad = nn.ZeroPad2d((left, right, top, bottom)), 0
    else:
        conv_pad = 0 if layer.padding == "valid" else int(layer.padding)
    conv = nn.Conv2d(
        c,
        layer.filters,
        (kh, kw),
        stride=(sh, sw),
        padding=conv_pad,
        dilation=(dh, dw),
        groups=layer.groups,
        bias=layer.use_bias,
    )
    bn = nn.BatchNorm2d(layer.filters) if layer.batch_norm else nn.Identity()
    mods = OrderedDict([("pad", pad), ("conv", conv), ("bn", bn), ("act", activation(layer.activation))])
    return nn.Sequential(
        OrderedDict((k, m) for k, m in mods.items() if k == "conv" or not isinstance(m, nn.Identity))
    ), out


def _pool(layer: MaxPool | AvgPool, in_shape: Shape, cls) -> tuple[nn.Module, Shape]:
    out = _rule(layer, in_shape)
    size = pair(layer.size)
    stride = pair(layer.stride if layer.stride is not None else layer.size)
    if cls is nn.AvgPool2d:
        # Why: padded zeros are not pixels; Keras-style averages exclude them.
        return nn.AvgPool2d(size, stride, layer.padding, count_include_pad=False), out
    return nn.MaxPool2d(size, stride, layer.padding), out


@register(MaxPool)
def build_max_pool(layer: MaxPool, in_shape: Shape) -> tuple[nn.Module, Shape]:
    """Max pooling (floor mode; padding pads with -inf as torch does)."""
    return _pool(layer, in_shape, nn.MaxPool2d)


@register(AvgPool)
def build_avg_pool(layer: AvgPool, in_shape: Shape) -> tuple[nn.Module, Shape]:
    """Average pooling (floor mode; padded positions excluded from the average)."""
    return _pool(layer, in_shape, nn.AvgPool2d)


class GlobalPool(nn.Module):
    """Mean or max over height and width: ``(N, C, H, W) -> (N, C)`` (flat, as in Keras)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "max":
            return x.amax(dim=(2, 3))  # (N, C)
        return x.mean(dim=(2, 3))  # (N, C)

    def extra_repr(self) -> str:
        return self.mode


@register(GlobalAvgPool)
def build_global_avg_pool(layer: GlobalAvgPool, in_shape: Shape) -> tuple[nn.Module, Shape]:
    return GlobalPool("avg"), _rule(layer, in_shape)


@register(GlobalMaxPool)
def build_global_max_pool(layer: GlobalMaxPool, in_shape: Shape) -> tuple[nn.Module, Shape]:
    return GlobalPool("max"), _rule(layer, in_shape)


@register(Flatten)
def build_flatten(layer: Flatten, in_shape: Shape) -> tuple[nn.Module, Shape]:
    return nn.Flatten(), _rule(layer, in_shape)


@register(Dense)
def build_dense(layer: Dense, in_shape: Shape) -> tuple[nn.Module, Shape]:
    """Linear -> BatchNorm1d (optional) -> activation; the input is flat (checked by the rule)."""
    out = _rule(layer, in_shape)
    mods = OrderedDict([("linear", nn.Linear(in_shape[0], layer.units, bias=layer.bias))])
    if layer.batch_norm:
        mods["bn"] = nn.BatchNorm1d(layer.units)
    if layer.activation != "none":
        mods["act"] = activation(layer.activation)
    return nn.Sequential(mods), out


@register(Dropout)
def build_dropout(layer: Dropout, in_shape: Shape) -> tuple[nn.Module, Shape]:
    return nn.Dropout(layer.rate), _rule(layer, in_shape)


@register(BatchNorm)
def build_batch_norm(layer: BatchNorm, in_shape: Shape) -> tuple[nn.Module, Shape]:
    """BatchNorm2d on images, BatchNorm1d on flat features."""
    out = _rule(layer, in_shape)
    return (nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d)(in_shape[0]), out


@register(ActivationLayer)
def build_activation(layer: ActivationLayer, in_shape: Shape) -> tuple[nn.Module, Shape]:
    return activation(layer.fn), _rule(layer, in_shape)


@register(Repeat)
def build_repeat(layer: Repeat, in_shape: Shape) -> tuple[nn.Module, Shape]:
    """``times`` copies of ``layers``, each built afresh (own weights)."""
    copies = []
    shape = in_shape
    for _ in range(layer.times):
        mod, shape = build_layers(layer.layers, shape)
        copies.append(mod)
    return nn.Sequential(*copies), shape


class ResidualBlock(nn.Module):
    """``act(shortcut(x) + body(x))``; shortcut is Identity or a 1x1 conv (+BN) projection."""

    def __init__(self, body: nn.Module, shortcut: nn.Module, act: nn.Module):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.body(x))


@register(Residual)
def build_residual(layer: Residual, in_shape: Shape) -> tuple[nn.Module, Shape]:
    """Body from ``layers``; shortcut per ``specs.shape_rules.residual_shortcut`` (ResNet option B)."""
    body, out = build_layers(layer.layers, in_shape)
    try:
        sc = residual_shortcut(layer, in_shape, out)
    except ShapeError as e:
        raise SpecError(Issue(f"residual: {e}")) from None
    shortcut: nn.Module = nn.Identity()
    if sc is not None:
        proj = OrderedDict([("conv", nn.Conv2d(sc.in_channels, sc.out_channels, 1, stride=sc.stride, bias=False))])
        if sc.batch_norm:
            proj["bn"] = nn.BatchNorm2d(sc.out_channels)
        shortcut = nn.Sequential(proj)
    return ResidualBlock(body, shortcut, activation(layer.activation)), out


# Why at the end: the backbone builder lives in its own module (timm), which does not import this one.
register(Backbone)(build_backbone)
