"""Training-time augmentation: random, per sample, batched, on the training device.

Geometric augmentations (flip, rotate, scale, translate, random_crop) are composed, in
spec order, into ONE affine matrix per sample. A sample whose matrix is only flips and
whole-pixel shifts (every sample of a spec without rotate / scale, and those whose rotate /
scale did not fire) is moved by ONE index gather with zero fill, on the uint8 pixels: exact
pixels, no interpolation blur, no float resample. Only the samples that rotate or scale go
through a single ``F.affine_grid`` + ``F.grid_sample`` (bilinear, zero fill) of their whole
composed matrix, so a rotate + scale + translate chain blurs the image once. Translations
are rounded to whole pixels. Photometric ones (brightness, contrast, gaussian_noise, cutout)
follow, in spec order, on the float batch.

Why batched torch and not kornia: kornia would do the same affine_grid/grid_sample and
elementwise ops under the hood, and it is one more dependency (it is not installed); a
handful of tensor ops on the training device is all this needs.
"""

from __future__ import annotations

import functools
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

from .prefetch import device_chunks

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
            ``(N, C, H, W)`` of ``x``'s float dtype (float32 for uint8), clamped to [0, 255].
        """
        if self.geometric:
            x = self._geometric(x, self._sampling_matrix(x, generator))
        if not x.is_floating_point():
            x = x.to(torch.float32)
        for op in self.photometric:
            x = self._photometric(op, x, generator).clamp_(0.0, 255.0)
        return x

    # ------------------------------------------------------------ geometric

    def _sampling_matrix(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Per-sample map from output to input pixel coordinates (centred), ``(N, 3, 3)``.

        With forward transforms T1..Tk in spec order, the output samples the input at
        ``T1^-1 ... Tk^-1 (u, v)``; each inverse is written directly below.
        """
        n, _, h, w = x.shape
        dev = x.device
        zero, one = torch.zeros(n, device=dev), torch.ones(n, device=dev)

        def matrix(a, b, c, d, e, f) -> torch.Tensor:  # rows (a b c), (d e f), (0 0 1); one stack, not 6 writes
            return torch.stack([a, b, c, d, e, f, zero, zero, one], dim=1).view(n, 3, 3)

        A = None
        for op in self.geometric:
            # 1.0 where the op fires, else 0.0; masks multiply (torch.where with a scalar
            # branch cost 10 us a call here, a multiply 1 us).
            fire = (torch.rand(n, generator=g, device=dev) < op.p).float()  # (N,)
            if isinstance(op, Flip):
                # Each requested axis flips independently with probability p.
                vflip = (torch.rand(n, generator=g, device=dev) < op.p).float()
                sx = 1 - 2 * fire if op.horizontal else one
                sy = 1 - 2 * vflip if op.vertical else one
                inv = matrix(sx, zero, zero, zero, sy, zero)
            elif isinstance(op, Rotate):
                u = torch.rand(n, generator=g, device=dev)
                rad = (u * 2 - 1) * fire * (op.degrees * math.pi / 180)
                cos, sin = torch.cos(rad), torch.sin(rad)
                inv = matrix(cos, sin, zero, -sin, cos, zero)
            elif isinstance(op, Scale):
                lo, hi = op.range
                s = lo + (hi - lo) * torch.rand(n, generator=g, device=dev)
                s = 1 / (1 + (s - 1) * fire)
                inv = matrix(s, zero, zero, zero, s, zero)
            elif isinstance(op, Translate):
                fy, fx = op.fraction
                u = torch.rand(n, 2, generator=g, device=dev)  # (N, 2): y, x
                t = (1 - 2 * u) * fire[:, None]  # minus the shift, as a fraction
                # Whole pixels: a shift is then an exact index move (see _geometric).
                inv = matrix(one, zero, torch.round(t[:, 1] * (fx * w)), zero, one, torch.round(t[:, 0] * (fy * h)))
            elif isinstance(op, RandomCrop):
                # Pad by P, crop back at offset o in [0, 2P]: out[y, x] = in[y + o - P, x + o - P].
                pad = op.padding
                o = (torch.randint(0, 2 * pad + 1, (n, 2), generator=g, device=dev).to(torch.float32) - pad) * fire[
                    :, None
                ]
                inv = matrix(one, zero, o[:, 1], zero, one, o[:, 0])
            A = inv if A is None else A @ inv
        return A

    def _geometric(self, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """Apply each sample's sampling matrix: an index gather where it is exact, else one resample."""
        n = x.shape[0]
        lin, t = A[:, :2, :2], A[:, :2, 2]  # (N, 2, 2), (N, 2)
        # Entries are sums of products of +-1, 0 and whole numbers: exact in float32, so == is safe.
        exact = (lin[:, 0, 1] == 0) & (lin[:, 1, 0] == 0) & (lin[:, 0, 0].abs() == 1) & (lin[:, 1, 1].abs() == 1)
        exact &= (t == torch.round(t)).all(dim=1)
        resampling = any(isinstance(op, (Rotate, Scale)) for op in self.geometric)
        if x.device.type == "cpu":
            # Why: on CPU, each sample takes one path (no device to sync): moved by slices where
            # exact, else resampled once with its whole matrix (which holds its shift and flip)
            dtype = x.dtype if x.is_floating_point() else torch.float32  # the copy is also the conversion
            need = torch.nonzero(~exact).squeeze(1)  # empty without rotate/scale: flips and shifts are exact
            moved = torch.nonzero(exact).squeeze(1) if len(need) else None  # None: every sample
            out = _shift_flip_slices(x, lin[:, 0, 0], lin[:, 1, 1], t[:, 0], t[:, 1], dtype, rows=moved)
            if len(need):
                work = x[need] if x.is_floating_point() else x[need].to(torch.float32)
                out[need] = self._resample(work, A[need]).clamp_(0.0, 255.0).to(out.dtype)
            return out
        out = _shift_flip(x, lin[:, 0, 0], lin[:, 1, 1], t[:, 0], t[:, 1])  # x's dtype
        if not resampling:
            return out
        out = out if out.is_floating_point() else out.to(torch.float32)
        # On a GPU, picking the subset would read a device value; resample all, keep the exact ones.
        work = x if x.is_floating_point() else x.to(torch.float32)
        resampled = self._resample(work, A).clamp_(0.0, 255.0).to(out.dtype)
        return torch.where(exact.view(n, 1, 1, 1), out, resampled)

    @staticmethod
    def _resample(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """One bilinear, zero-filled resample of ``x`` at ``A`` (centred pixel coordinates)."""
        n, c, h, w = x.shape
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        scale, base = _grid_constants(h, w, x.device, work.dtype)
        theta = A[:, :2, :].to(work.dtype) * scale  # (N, 2, 3), affine_grid's normalised coordinates
        # affine_grid's grid as ONE (2N, 3) x (3, HW) product (a view, same values): on CPU,
        # affine_grid's batched matmul cost 4x this on small images, more than the resample.
        grid = (theta.reshape(n * 2, 3) @ base).view(n, 2, h, w).permute(0, 2, 3, 1)  # (N, H, W, 2)
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


def _shift_flip(x: torch.Tensor, sx, sy, tx, ty) -> torch.Tensor:
    """``out[n, :, i, j] = x[n, :, sy*(i - cy) + ty + cy, sx*(j - cx) + tx + cx]``, 0 outside; ONE gather.

    ``sx, sy`` are +-1 and ``tx, ty`` whole numbers, per sample ``(N,)``; ``cx, cy`` are the centre
    ``((W - 1) / 2, (H - 1) / 2)``: the centred sampling matrix of :meth:`Augmenter._sampling_matrix`
    read as pixel indices. Works on any dtype (uint8 included): pixels are moved, never mixed.
    """
    n, c, h, w = x.shape
    dev = x.device
    cx, cy = (w - 1) / 2, (h - 1) / 2
    xs = torch.round(sx[:, None] * (torch.arange(w, device=dev) - cx) + (tx + cx)[:, None]).long()  # (N, W)
    ys = torch.round(sy[:, None] * (torch.arange(h, device=dev) - cy) + (ty + cy)[:, None]).long()  # (N, H)
    inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]  # (N, H, W)
    flat = ys.clamp(0, h - 1)[:, :, None] * w + xs.clamp(0, w - 1)[:, None, :]  # (N, H, W) source index
    out = x.reshape(n, c, h * w).gather(2, flat.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
    return out.masked_fill_(~inside[:, None], 0)


def _shift_flip_slices(
    x: torch.Tensor, sx, sy, tx, ty, dtype: torch.dtype | None = None, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`_shift_flip` as one flip and one slice copy per sample: the CPU path.

    Why: on CPU a gather reads an int64 index per pixel (8.8x the cost of the uint8 -> float
    conversion at 32x3x224x224); slices are plain copies. It reads the parameters on the host,
    which costs nothing on CPU; a GPU takes the gather (no host read). ``dtype``: of the result
    (default ``x``'s); the copies convert, so no separate conversion pass. ``rows``: the samples
    to move (default all); the others are left unwritten, for the caller to fill.
    """
    n, _, h, w = x.shape
    # Why empty and not zeros: only the uncovered border is zeroed below; at 32x3x224x224 a
    # whole-batch memset cost about as much as all the copies.
    out = torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)
    # After flipping an axis, the source of output j is j + d with d = t (no flip) or -t (flip).
    params = torch.stack([sx, sy, tx, ty], dim=1).tolist()
    for i in range(n) if rows is None else rows.tolist():
        fx, fy, dx, dy = params[i]
        src = x[i]
        dims = [d for d, f in ((-1, fx), (-2, fy)) if f < 0]
        if dims:
            src = src.flip(dims)
        dx, dy = int(dx if fx > 0 else -dx), int(dy if fy > 0 else -dy)
        y0, y1, x0, x1 = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)
        if not (y0 < y1 and x0 < x1):
            out[i].zero_()  # shifted out of the frame entirely
            continue
        out[i, :, y0:y1, x0:x1] = src[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
        out[i, :, :y0].zero_()
        out[i, :, y1:].zero_()
        out[i, :, y0:y1, :x0].zero_()
        out[i, :, y0:y1, x1:].zero_()
    return out


@functools.lru_cache(maxsize=32)
def _grid_constants(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """For an H x W image: the centred-pixel -> normalised scale of a (2, 3) affine (align_corners
    False: u = x_n * W/2), and the (3, H*W) homogeneous normalised pixel centres (x, y, 1)."""
    scale = torch.tensor([[1.0, h / w, 2 / w], [w / h, 1.0, 2 / h]], device=device, dtype=dtype)
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    base = torch.stack([xs.repeat(h), ys.repeat_interleave(w), torch.ones(h * w, device=device, dtype=dtype)])
    return scale, base


# Pixels augmented per augmenter call, in bytes of float32: several batches of small images
# at once. Why: the augmenter is ~30 small tensor ops whatever the batch size; on 12x12 digits
# that was 165 us per 64-image batch against 5 ms steps, and a call on 23 batches costs about
# what a call on one does. Large images (a batch over this size) go one batch per call.
AUGMENT_CHUNK_BYTES = 16 << 20


def augmented_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    perm: torch.Tensor,
    batch: int,
    device: torch.device,
    augment: Augmenter | None,
    generator: torch.Generator | None,
):
    """The training batches of one epoch, in ``perm`` order: ``(idx, x, y)`` per step.

    ``x`` is float ``(B, C, H, W)`` in [0, 255] on ``device``, augmented; ``images`` is the uint8
    cache: anything with ``shape`` that a tensor of indices picks rows of. Augmentation runs on as
    many whole batches at once as fit ``AUGMENT_CHUNK_BYTES``; on CUDA the next chunk is copied
    (pinned, non-blocking, a side stream) while this one trains (:func:`.prefetch.device_chunks`).
    """
    per_batch = max(1, math.prod(images.shape[1:]) * 4 * batch)  # float32 bytes of one batch
    chunk = batch * max(1, AUGMENT_CHUNK_BYTES // per_batch)
    for idx, x, y in device_chunks(images, labels, perm, chunk, device):  # x: uint8, the next chunk in flight
        # Flips and shifts move the uint8 pixels (a quarter of float's bytes); float afterwards.
        x = augment(x, generator) if augment is not None else x.float()
        for j in range(0, len(idx), batch):
            yield idx[j : j + batch], x[j : j + batch], y[j : j + batch]


def build_augmenter(spec) -> Augmenter | None:
    """The spec's ``augment`` list as an :class:`Augmenter`; None when nothing can change an image."""
    aug = Augmenter(list(spec.augment))
    return aug if (aug.geometric or aug.photometric) else None
