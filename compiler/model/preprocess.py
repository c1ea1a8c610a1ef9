"""Deterministic preprocessing compiled into the model (and so into the exported ONNX graph).

Input: pixels ``(N, C, H, W)``, uint8 or float, in [0, 255]. Output: float32, after the
spec's ``preprocess`` steps. Unless the list starts with ``rescale``, pixels are first
scaled by 1/255. Every step is made of ops the dynamo ONNX exporter handles (slicing,
Conv, Pad reflect, TopK, elementwise), with a dynamic batch axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convspec.specs.errors import Issue, SpecError
from convspec.specs.pipeline import CenterCrop, Crop, Denoise, Grayscale, Normalize, Rescale

Shape = tuple[int, ...]

# ITU-R BT.601 luma, as Pillow's convert("L") (which rounds R*299/1000 + G*587/1000 + B*114/1000).
LUMA = (0.299, 0.587, 0.114)


class RescaleStep(nn.Module):
    """``x * scale + offset``."""

    def __init__(self, scale: float, offset: float = 0.0):
        super().__init__()
        self.scale, self.offset = float(scale), float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale
        return x + self.offset if self.offset else x

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, offset={self.offset:g}"


class NormalizeStep(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers ``(1, C, 1, 1)``.

    Why buffers: with ``mean: auto`` the statistics are computed from the training split
    after the model is built (:meth:`set_stats`); as buffers they travel in the state_dict
    and are baked into the exported graph.
    """

    def __init__(self, mean: list[float] | None, std: list[float] | None, channels: int):
        super().__init__()
        self.auto = mean is None
        m = torch.tensor(mean if mean is not None else [0.0] * channels, dtype=torch.float32)
        s = torch.tensor(std if std is not None else [1.0] * channels, dtype=torch.float32)
        self.register_buffer("mean", m.view(1, channels, 1, 1))
        self.register_buffer("std", s.view(1, channels, 1, 1))

    def set_stats(self, mean, std) -> None:
        """Set the per-channel statistics (one value per channel each; std > 0)."""
        c = self.mean.shape[1]
        m = torch.as_tensor(mean, dtype=torch.float32).flatten()
        s = torch.as_tensor(std, dtype=torch.float32).flatten()
        if m.numel() != c or s.numel() != c:
            raise ValueError(
                f"normalize needs {c} mean and std values (one per channel); got {m.numel()} and {s.numel()}"
            )
        if not bool((s > 0).all()):
            raise ValueError(f"normalize std must be > 0 (got {s.tolist()})")
        self.mean.copy_(m.view(1, c, 1, 1))
        self.std.copy_(s.view(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std  # (N, C, H, W)


class CropStep(nn.Module):
    """A fixed window ``[top:top+height, left:left+width]`` (static sizes)."""

    def __init__(self, top: int, left: int, height: int, width: int):
        super().__init__()
        self.top, self.left, self.height, self.width = top, left, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.top : self.top + self.height, self.left : self.left + self.width]

    def extra_repr(self) -> str:
        return f"top={self.top}, left={self.left}, height={self.height}, width={self.width}"


def gaussian_kernel1d(kernel: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps of odd length ``kernel`` (as OpenCV getGaussianKernel)."""
    r = kernel // 2
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(torch.float32)


class GaussianBlur(nn.Module):
    """Separable Gaussian blur, reflect border (OpenCV's default BORDER_REFLECT_101); same size out.

    Why separable: two depthwise 1-D convs cost 2k MACs per pixel instead of k*k.
    """

    def __init__(self, channels: int, kernel: int, sigma: float):
        super().__init__()
        self.channels, self.kernel, self.sigma = channels, kernel, sigma
        g = gaussian_kernel1d(kernel, sigma)
        self.register_buffer("weight_v", g.view(1, 1, kernel, 1).repeat(channels, 1, 1, 1), persistent=False)
        self.register_buffer("weight_h", g.view(1, 1, 1, kernel).repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.kernel // 2
        x = F.pad(x, (r, r, r, r), mode="reflect")  # (N, C, H+2r, W+2r)
        x = F.conv2d(x, self.weight_v, groups=self.channels)  # (N, C, H, W+2r)
        return F.conv2d(x, self.weight_h, groups=self.channels)  # (N, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel={self.kernel}, sigma={self.sigma:g}"


class MedianBlur(nn.Module):
    """Median over a ``kernel x kernel`` window, reflect border; same size out.

    The k*k shifted windows are stacked by static slicing and the median is the smallest
    of the top (k*k // 2 + 1) values. Why: ``aten.median``/``unfold`` have no clean ONNX
    lowering; Slice + Concat + TopK export everywhere. Memory is k*k times the image, fine
    for the small kernels (3, 5) median filtering is used with.
    """

    def __init__(self, kernel: int):
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, r = self.kernel, self.kernel // 2
        h, w = x.shape[-2], x.shape[-1]
        p = F.pad(x, (r, r, r, r), mode="reflect")  # (N, C, H+2r, W+2r)
        windows = torch.stack(
            [p[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k)], dim=-1
        )  # (N, C, H, W, k*k)
        top = torch.topk(windows, k * k // 2 + 1, dim=-1).values  # (N, C, H, W, k*k//2+1), descending
        return top[..., -1]  # (N, C, H, W)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


class GrayscaleStep(nn.Module):
    """RGB -> L with ITU-R 601 weights (0.299, 0.587, 0.114), as Pillow's ``convert("L")``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).sum(dim=1, keepdim=True)  # (N, 1, H, W)


AFFINE_STEPS = (RescaleStep, NormalizeStep)  # each is x * a + b per channel; crops commute with them


def affine_start(steps) -> int:
    """The first index ``k`` such that ``steps[k:]`` are crops and per-channel affines only."""
    k = len(steps)
    while k > 0 and isinstance(steps[k - 1], (*AFFINE_STEPS, CropStep)):
        k -= 1
    return k


def compose_affine(steps, lead: float = 1.0, dtype: torch.dtype | None = None):
    """``(a, b)`` with ``x * a + b`` equal to multiplying by ``lead``, then the affine ``steps`` in
    order (crops are skipped). Python floats while only rescales are seen, else ``(1, C, 1, 1)``
    tensors (in ``dtype`` when given). Computed without reading a device value (no host sync)."""
    a, b = lead, 0.0
    for step in steps:
        if isinstance(step, RescaleStep):
            a, b = a * step.scale, b * step.scale + step.offset
        elif isinstance(step, NormalizeStep):
            m, s = (step.mean, step.std) if dtype is None else (step.mean.to(dtype), step.std.to(dtype))
            a, b = a / s, (b - m) / s
    return a, b


class Preprocess(nn.Module):
    """The spec's preprocess steps as one module: pixels in [0, 255] -> float32 features.

    Attributes:
        scale_first: whether pixels are multiplied by 1/255 before the first step.
        steps: one module per spec step, in order.
        in_shape, out_shape: ``(C, H, W)`` before and after.
    """

    def __init__(self, steps: list[nn.Module], scale_first: bool, in_shape: Shape, out_shape: Shape):
        super().__init__()
        self.scale_first = scale_first
        self.steps = nn.ModuleList(steps)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.affine_from = affine_start(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The steps in order, except that the trailing crops go first and the per-channel affines
        after them (1/255, rescale, normalize) are one multiply-add. Why: at 224 px the separate
        passes over the batch cost a third of evaluation (bench/real_size.py); the pixels are the
        same up to float rounding, and the exported graph folds them further (export/fold.py)."""
        x = x.to(torch.float32)  # (N, C, H, W)
        steps, k = list(self.steps), self.affine_from
        lead = 1.0 / 255.0 if self.scale_first else 1.0
        if k > 0 and lead != 1.0:
            x, lead = x * lead, 1.0
        for step in steps[:k]:
            x = step(x)
        tail = steps[k:]
        for step in tail:
            if isinstance(step, CropStep):
                x = step(x)
        a, b = compose_affine(tail, lead)
        if isinstance(a, torch.Tensor):
            return torch.addcmul(b, x, a)
        x = x * a if a != 1.0 else x
        return x + b if b else x

    @property
    def auto_normalize(self) -> list[NormalizeStep]:
        """The ``normalize`` steps whose statistics come from the data (``mean: auto``)."""
        return [s for s in self.steps if isinstance(s, NormalizeStep) and s.auto]

    def before_auto_normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels as the first ``mean: auto`` normalize step sees them (to compute its stats).

        Raises:
            ValueError: no step has ``mean: auto``.
        """
        autos = self.auto_normalize
        if not autos:
            raise ValueError("no normalize step has mean: auto")
        x = x.to(torch.float32)
        if self.scale_first:
            x = x * (1.0 / 255.0)
        for step in self.steps:
            if step is autos[0]:
                return x
            x = step(x)
        raise AssertionError("unreachable")


def build_preprocess(spec) -> Preprocess:
    """Compile ``spec.preprocess`` into a :class:`Preprocess` module.

    Raises:
        SpecError: a denoise kernel is too large for the image at that step (reflect
            padding needs kernel // 2 < height and width).
    """
    shape: Shape = (spec.input.channels, *spec.input.size)
    in_shape = shape
    steps: list[nn.Module] = []
    for i, step in enumerate(spec.preprocess):
        c, h, w = shape
        if isinstance(step, Rescale):
            steps.append(RescaleStep(step.scale, step.offset))
        elif isinstance(step, Normalize):
            if isinstance(step.mean, str) and step.mean != "auto":  # imagenet | backbone
                from .backbone import named_normalize

                steps.append(NormalizeStep(*named_normalize(step.mean, spec, c), c))
                continue
            auto = step.mean == "auto"
            steps.append(NormalizeStep(None if auto else list(step.mean), None if auto else list(step.std), c))
        elif isinstance(step, CenterCrop):
            ch, cw = step.size
            # Why floor: Keras' CenterCrop; the odd pixel is dropped at the bottom/right.
            steps.append(CropStep((h - ch) // 2, (w - cw) // 2, ch, cw))
            shape = (c, ch, cw)
        elif isinstance(step, Crop):
            top, left, bh, bw = step.box
            steps.append(CropStep(top, left, bh, bw))
            shape = (c, bh, bw)
        elif isinstance(step, Denoise):
            if step.kernel // 2 >= min(h, w):
                raise SpecError(
                    Issue(
                        f"denoise kernel {step.kernel} is too large for the {h}x{w} image at this step (needs kernel "
                        f"// 2 < {min(h, w)})",
                        ("preprocess", i, "kernel"),
                        spec.source_file,
                    )
                )
            if step.method == "gaussian":
                steps.append(GaussianBlur(c, step.kernel, step.effective_sigma))
            else:
                steps.append(MedianBlur(step.kernel))
        elif isinstance(step, Grayscale):
            steps.append(GrayscaleStep())
            shape = (1, h, w)
        else:  # pragma: no cover - the union is closed
            raise SpecError(Issue(f"unknown preprocess step {step.type!r}", ("preprocess", i), spec.source_file))
    scale_first = not (spec.preprocess and isinstance(spec.preprocess[0], Rescale))
    return Preprocess(steps, scale_first, in_shape, shape)
