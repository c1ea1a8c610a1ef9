"""Training-time augmentation: random, per sample, batched, on the training device.

Geometric augmentations (flip, rotate, scale, translate, random_crop) are composed, in
spec order, into ONE affine matrix per sample and applied with a single
``F.affine_grid`` + ``F.grid_sample`` (bilinear, zero fill): one resample per batch, not
one per op, so a rotate + scale + translate chain blurs the image once. Photometric ones
(brightness, contrast, gaussian_noise, cutout) follow, in spec order, on the resampled
batch.

Why batched torch and not kornia: kornia would do the same affine_grid/grid_sample and
elementwise ops under the hood, and it is one more dependency (it is not installed); a
handful of tensor ops on the training device is all this needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from convspec.specs.pipeline import (
    Brightness,
    Contrast,
    Cutout,
    Flip,
    GaussianNoise,
    RandomCrop,
    Rotate,
    Scale,
    Translate,
)

GEOMETRIC = (Flip, Rotate, Scale, Translate, RandomCrop)
PHOTOMETRIC = (Brightness, Contrast, GaussianNoise, Cutout)
LUMA = (0.299, 0.587, 0.114)


def _effective(op) -> bool:
    """False for ops that can never change an image (p == 0, a flip of no axis)."""
    if op.p == 0:
        return False
    if isinstance(op, Flip):
        return op.horizontal or op.vertical
    return True


class Augmenter(nn.Module):
    """The spec's ``augment`` list as one batched module (no parameters).

    ``forward`` always augments; call it on training batches only.

    Attributes:
        geometric: the geometric op specs, in spec order (composed into one affine).
        photometric: the photometric op specs, in spec order.
    """

    def __init__(self, ops: list):
        super().__init__()
        ops = [op for op in ops if _effective(op)]
        self.geometric = [op for op in ops if isinstance(op, GEOMETRIC)]
        self.photometric = [op for op in ops if isinstance(op, PHOTOMETRIC)]

    def extra_repr(self) -> str:
        return ", ".join(op.type for op in self.geometric + self.photometric)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch.

        Args:
            x: pixels ``(N, C, H, W)`` in [0, 255]; float (uint8 is converted to float32).
            generator: source of randomness; must live on ``x.device``. None: torch's default.

        Returns:
            ``(N, C, H, W)`` of ``x``'s float dtype, clamped to [0, 255].
        """
        if not x.is_floating_point():
            x = x.to(torch.float32)
        if self.geometric:
            x = self._resample(x, self._sampling_matrix(x, generator))
        for op in self.photometric:
            x = self._photometric(op, x, generator).clamp_(0.0, 255.0)
        return x.clamp(0.0, 255.0)

    # ------------------------------------------------------------ geometric

    def _sampling_matrix(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Per-sample map from output to input pixel coordinates (centred), ``(N, 3, 3)``.

        With forward transforms T1..Tk in spec order, the output samples the input at
        ``T1^-1 ... Tk^-1 (u, v)``; each inverse is written directly below.
        """
        n, _, h, w = x.shape
        dev = x.device
        A = torch.eye(3, device=dev).repeat(n, 1, 1)  # (N, 3, 3)
        for op in self.geometric:
            fire = torch.rand(n, generator=g, device=dev) < op.p  # (N,)
            inv = torch.eye(3, device=dev).repeat(n, 1, 1)
            if isinstance(op, Flip):
                # Each requested axis flips independently with probability p.
                hflip, vflip = fire, torch.rand(n, generator=g, device=dev) < op.p
                if op.horizontal:
                    inv[:, 0, 0] = torch.where(hflip, -1.0, 1.0)
                if op.vertical:
                    inv[:, 1, 1] = torch.where(vflip, -1.0, 1.0)
            elif isinstance(op, Rotate):
                deg = (torch.rand(n, generator=g, device=dev) * 2 - 1) * op.degrees
                rad = torch.where(fire, deg, 0.0) * (math.pi / 180)
                cos, sin = torch.cos(rad), torch.sin(rad)
                inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 0], inv[:, 1, 1] = cos, sin, -sin, cos
            elif isinstance(op, Scale):
                lo, hi = op.range
                s = lo + (hi - lo) * torch.rand(n, generator=g, device=dev)
                s = torch.where(fire, s, 1.0)
                inv[:, 0, 0], inv[:, 1, 1] = 1 / s, 1 / s
            elif isinstance(op, Translate):
                fy, fx = op.fraction
                t = torch.rand(n, 2, generator=g, device=dev) * 2 - 1  # (N, 2) in [-1, 1]
                inv[:, 0, 2] = -torch.where(fire, t[:, 1] * fx * w, 0.0)
                inv[:, 1, 2] = -torch.where(fire, t[:, 0] * fy * h, 0.0)
            elif isinstance(op, RandomCrop):
                # Pad by P, crop back at offset o in [0, 2P]: out[y, x] = in[y + o - P, x + o - P].
                pad = op.padding
                o = torch.randint(0, 2 * pad + 1, (n, 2), generator=g, device=dev).to(torch.float32) - pad
                inv[:, 0, 2] = torch.where(fire, o[:, 1], 0.0)
                inv[:, 1, 2] = torch.where(fire, o[:, 0], 0.0)
            A = A @ inv
        return A

    @staticmethod
    def _resample(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """One bilinear, zero-filled resample of ``x`` at ``A`` (centred pixel coordinates)."""
        n, c, h, w = x.shape
        # Centred pixels -> affine_grid's normalised coords (align_corners=False): u = x_n * W/2.
        theta = torch.empty(n, 2, 3, device=x.device)
        theta[:, 0, 0] = A[:, 0, 0]
        theta[:, 0, 1] = A[:, 0, 1] * (h / w)
        theta[:, 0, 2] = A[:, 0, 2] * (2 / w)
        theta[:, 1, 0] = A[:, 1, 0] * (w / h)
        theta[:, 1, 1] = A[:, 1, 1]
        theta[:, 1, 2] = A[:, 1, 2] * (2 / h)
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        grid = F.affine_grid(theta.to(work.dtype), [n, c, h, w], align_corners=False)  # (N, H, W, 2)
        out = F.grid_sample(work, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.to(x.dtype)  # (N, C, H, W)

    # ----------------------------------------------------------- photometric

    @staticmethod
    def _photometric(op, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, c, h, w = x.shape
        dev = x.device
        fire = torch.rand(n, generator=g, device=dev) < op.p  # (N,)
        if isinstance(op, (Brightness, Contrast)):
            lo, hi = op.factor
            f = lo + (hi - lo) * torch.rand(n, generator=g, device=dev)
            f = torch.where(fire, f, 1.0).to(x.dtype).view(n, 1, 1, 1)
            if isinstance(op, Brightness):
                return x * f
            if c == 3:  # blend with the mean grey level, as torchvision's adjust_contrast
                luma = torch.tensor(LUMA, device=dev, dtype=x.dtype).view(1, 3, 1, 1)
                mean = (x * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)  # (N, 1, 1, 1)
            else:
                mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
            return mean + f * (x - mean)
        if isinstance(op, GaussianNoise):
            noise = torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype)
            scale = torch.where(fire, op.std * 255.0, 0.0).to(x.dtype).view(n, 1, 1, 1)
            return x + noise * scale
        if isinstance(op, Cutout):
            # One size x size square per image, centred anywhere (it may hang over the edge).
            s = op.size
            cy = torch.randint(0, h, (n, 1), generator=g, device=dev) - s // 2  # (N, 1) top
            cx = torch.randint(0, w, (n, 1), generator=g, device=dev) - s // 2  # (N, 1) left
            ys = torch.arange(h, device=dev).view(1, h)
            xs = torch.arange(w, device=dev).view(1, w)
            rows = (ys >= cy) & (ys < cy + s)  # (N, H)
            cols = (xs >= cx) & (xs < cx + s)  # (N, W)
            box = rows[:, :, None] & cols[:, None, :] & fire.view(n, 1, 1)  # (N, H, W)
            return x.masked_fill(box[:, None], 0.0)
        raise TypeError(f"not a photometric op: {op!r}")  # pragma: no cover


def build_augmenter(spec) -> Augmenter | None:
    """The spec's ``augment`` list as an :class:`Augmenter`; None when nothing can change an image."""
    aug = Augmenter(list(spec.augment))
    return aug if (aug.geometric or aug.photometric) else None
