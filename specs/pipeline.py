"""Preprocess steps (deterministic, exported) and augmentations (training only)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .base import NonNegInt, Pair, PosInt, Probability, Strict

# ---------------------------------------------------------------- preprocess


NAMED_STATS = ("imagenet", "backbone")


class Normalize(Strict):
    """``(x - mean) / std`` per channel, on pixels already scaled to [0, 1].

    ``mean: auto`` computes both from the training split; ``imagenet`` is ImageNet's
    (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225); ``backbone`` the backbone layer's own
    pretrained statistics. With one channel, a named statistic is the mean of its three values.
    """

    type: Literal["normalize"]
    mean: list[float] | Literal["auto", "imagenet", "backbone"]
    std: list[Annotated[float, Field(gt=0)]] | Literal["auto", "imagenet", "backbone"] | None = None

    @model_validator(mode="after")
    def _auto_together(self):
        if self.mean == "auto" and isinstance(self.std, list):
            raise ValueError("mean: auto computes std from the data too; write std: auto or leave std out")
        if self.mean in NAMED_STATS and self.std not in (None, self.mean):
            raise ValueError(f"mean: {self.mean} goes with std: {self.mean} (or std left out); got std: {self.std}")
        if isinstance(self.std, str) and self.std in NAMED_STATS and self.mean != self.std:
            raise ValueError(f"std: {self.std} goes with mean: {self.std}")
        if isinstance(self.mean, list) and not isinstance(self.std, list):
            raise ValueError("std: a list of one value per channel is required when mean is a list")
        return self


# Why bounded: 255 * 1e308 is inf, and the run then blamed its NaN loss on the learning rate.
_Affine = Annotated[float, Field(ge=-1e6, le=1e6)]


class Rescale(Strict):
    type: Literal["rescale"]
    scale: _Affine = 1 / 255
    offset: _Affine = 0.0


class CenterCrop(Strict):
    type: Literal["center_crop"]
    size: Pair


class Crop(Strict):
    """A fixed region of interest: ``box: [top, left, height, width]``."""

    type: Literal["crop"]
    box: tuple[NonNegInt, NonNegInt, PosInt, PosInt]


#: Why: the median is exported as k*k stacked windows and a TopK (no ONNX median op), k*k copies of
#: each image: 961 at 31, which stalled an export of 32-px images for minutes; 81 at 9.
MAX_MEDIAN_KERNEL = 9


class Denoise(Strict):
    type: Literal["denoise"]
    method: Literal["gaussian", "median"] = "gaussian"
    kernel: Annotated[int, Field(ge=3, le=31)] = 3
    sigma: Annotated[float, Field(gt=0)] | None = Field(
        None, description="gaussian only; default 0.3*((kernel-1)*0.5-1)+0.8 as OpenCV"
    )

    @field_validator("kernel")
    @classmethod
    def _odd_kernel(cls, kernel):
        if kernel % 2 == 0:
            raise ValueError(f"must be odd (got {kernel})")
        return kernel

    @model_validator(mode="after")
    def _median_no_sigma(self):
        if self.method == "median" and self.sigma is not None:
            raise ValueError("sigma applies to method: gaussian only")
        if self.method == "median" and self.kernel > MAX_MEDIAN_KERNEL:
            raise ValueError(
                f"a median kernel is at most {MAX_MEDIAN_KERNEL} (got {self.kernel}): each pixel sorts kernel x kernel "
                f"values, so the model holds that many copies of each image ({self.kernel**2} here); for strong "
                "smoothing use method: gaussian"
            )
        return self

    @property
    def effective_sigma(self) -> float:
        return self.sigma if self.sigma is not None else 0.3 * ((self.kernel - 1) * 0.5 - 1) + 0.8


class Grayscale(Strict):
    type: Literal["grayscale"]


PreprocessStep = Annotated[Normalize | Rescale | CenterCrop | Crop | Denoise | Grayscale, Field(discriminator="type")]

# ------------------------------------------------------------------- augment


class Flip(Strict):
    type: Literal["flip"]
    horizontal: bool = True
    vertical: bool = False
    p: Probability = 0.5


class Rotate(Strict):
    type: Literal["rotate"]
    degrees: Annotated[float, Field(ge=0, le=180)]
    p: Probability = 1.0


def _ordered_range(value: tuple[float, float]) -> tuple[float, float]:
    """A field validator: ``[low, high]`` with low <= high (the error points at the key)."""
    lo, hi = value
    if lo > hi:
        raise ValueError(f"low must be <= high (got [{lo:g}, {hi:g}])")
    return value


class Scale(Strict):
    type: Literal["scale"]
    range: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]
    p: Probability = 1.0

    _order = field_validator("range")(_ordered_range)


class Translate(Strict):
    type: Literal["translate"]
    fraction: tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]]
    p: Probability = 1.0


class RandomCrop(Strict):
    type: Literal["random_crop"]
    padding: PosInt
    p: Probability = 1.0


class Brightness(Strict):
    """Multiply pixels by a factor drawn from ``factor``."""

    type: Literal["brightness"]
    factor: tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]]
    p: Probability = 1.0

    _order = field_validator("factor")(_ordered_range)


class Contrast(Strict):
    """Blend each image with its mean grey by a factor drawn from ``factor``."""

    type: Literal["contrast"]
    factor: tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]]
    p: Probability = 1.0

    _order = field_validator("factor")(_ordered_range)


class GaussianNoise(Strict):
    """Add noise of standard deviation ``std``, in units of [0, 1] pixels."""

    type: Literal["gaussian_noise"]
    std: Annotated[float, Field(gt=0)]
    p: Probability = 1.0


class Cutout(Strict):
    """Zero one square of side ``size`` pixels at a random place."""

    type: Literal["cutout"]
    size: PosInt
    p: Probability = 1.0


AugmentStep = Annotated[
    Flip | Rotate | Scale | Translate | RandomCrop | Brightness | Contrast | GaussianNoise | Cutout,
    Field(discriminator="type"),
]
