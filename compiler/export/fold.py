"""Fold the per-channel affine end of the preprocessing (1/255, rescale, normalize) into the
first convolution, for the exported graph only; the training model is not touched.

Why: at real sizes these elementwise passes over the input cost more than the network's first
layers. Measured under ONNX Runtime (2 threads, batch 256 of 3x224x224 uint8, conv 5x5/4 16 "same"
-> pools -> conv 32 -> conv 64, bench/real_size.py's net): Cast + Mul + Sub + Div were 70 % of
inference; folded, 1,557 -> 2,009 images/s (1.23x); without the padding's Add, 1.53x.
Why by hand: ORT fuses BatchNorm into a Conv but not an affine before one, and torch's
``fuse_conv_bn_eval`` (used here for the BatchNorm) has no input-side counterpart.

Exact, up to float rounding (the export's parity check compares with the unfolded model): with
no padding, ``conv_w(a*x + b) = conv_{w*a}(x) + sum(w*b)``, a bias: the graph is Cast -> Conv.
With padding the border taps must still see 0 after the affine, so the shift stays before the
convolution: ``conv_w(pad(a*x + b)) = conv_{w*a}(pad(x + b/a))``, Cast -> Add -> Conv (a
per-position map after the convolution instead measured slower: it splits ORT's Conv + Relu
fusion and its blocked layout). Where the first layer cannot take the affine (a residual, a
backbone), it is still merged into one ``x * a + b``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..model.preprocess import CropStep, Preprocess, affine_start, compose_affine


class AffineStep(nn.Module):
    """``x * scale + shift`` per channel; ``scale`` and ``shift`` are ``(1, C, 1, 1)`` buffers."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.view(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.view(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class FoldedStem(nn.Module):
    """The first conv layer with the input affine and its BatchNorm inside: (+ shift) -> pad -> conv -> act."""

    def __init__(self, shift: torch.Tensor | None, pad: nn.Module, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.pad, self.conv, self.act = pad, conv, act
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.pad(x + self.shift if self.shift is not None else x)))


def _affine_suffix(pre: Preprocess) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """``(k, a, b)``: steps ``k:`` are crops and per-channel affines that compose to ``x*a + b``
    (with the leading 1/255 when ``k == 0``); None when there is nothing to fold."""
    c = pre.out_shape[0]  # the suffix changes no channel count (grayscale cannot be in it)
    steps = list(pre.steps)
    k = affine_start(steps)
    lead = 1.0 / 255.0 if k == 0 and pre.scale_first else 1.0
    a, b = compose_affine(steps[k:], lead, torch.float64)
    a, b = (torch.as_tensor(v, dtype=torch.float64).flatten().expand(c).clone() for v in (a, b))
    if torch.equal(a, torch.ones_like(a)) and not b.any():
        return None
    return k, a.float(), b.float()


def _without_affine(pre: Preprocess, k: int, stem_takes_it: bool, a, b) -> Preprocess:
    """``pre`` with steps ``k:`` reduced to their crops, plus one AffineStep unless the stem takes it."""
    steps = list(pre.steps)[:k] + [s for s in list(pre.steps)[k:] if isinstance(s, CropStep)]
    if not stem_takes_it:
        steps.append(AffineStep(a, b))
    return Preprocess(steps, pre.scale_first and k > 0, pre.in_shape, pre.out_shape)


def _fold_stem(block: nn.Module, a: torch.Tensor, b: torch.Tensor) -> FoldedStem | None:
    """``block`` (pad? -> conv -> bn? -> act?, as ``build_conv`` makes it) fed ``a*x + b``, as one FoldedStem."""
    if not isinstance(block, nn.Sequential) or set(block._modules) - {"pad", "conv", "bn", "act"}:
        return None
    conv = block._modules.get("conv")
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.padding_mode != "zeros":
        return None
    if isinstance(conv.padding, str) or not bool((a != 0).all()):  # padding="same": build_conv never makes it
        return None
    pad = block._modules.get("pad") or nn.Identity()
    bn = block._modules.get("bn")
    fused = fuse_conv_bn_eval(conv, bn) if isinstance(bn, nn.BatchNorm2d) else copy.deepcopy(conv)
    c = a.numel()
    shift = None
    with torch.no_grad():
        if not any(conv.padding) and isinstance(pad, nn.Identity):  # every tap sees b: a bias
            bias = fused.bias if fused.bias is not None else torch.zeros(fused.out_channels)
            fused.bias = nn.Parameter(bias + (fused.weight * b.view(1, c, 1, 1)).sum(dim=(1, 2, 3)))
        elif b.any():  # the padding is 0 after the affine: x + b/a, padded, then conv with w*a
            shift = (b / a).view(1, c, 1, 1)
        fused.weight.mul_(a.view(1, c, 1, 1))
    return FoldedStem(shift, pad, fused, block._modules.get("act") or nn.Identity())


def fold_for_export(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode ConvspecModel with its input affine folded (see the module doc);
    the model itself when there is nothing to fold or it is not a ConvspecModel in eval mode."""
    pre, body = getattr(model, "preprocess", None), getattr(model, "body", None)
    if model.training or not isinstance(pre, Preprocess) or not isinstance(body, nn.Sequential):
        return model
    found = _affine_suffix(pre)
    if found is None:
        return model
    k, a, b = found
    out = copy.deepcopy(model)  # Why first: the folded modules must share nothing with the model
    stem = _fold_stem(out.body[0], a, b) if len(out.body) else None
    out.preprocess = _without_affine(out.preprocess, k, stem is not None, a, b)
    if stem is not None:
        out.body = nn.Sequential(stem, *list(out.body)[1:])
    return out.eval()
