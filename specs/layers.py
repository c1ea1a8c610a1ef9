"""Layer specs: one Pydantic model per layer type, grouped as a discriminated union on ``type``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import Activation, IntOrPair, NonNegInt, PosInt, Strict


class LayerSpec(Strict):
    """Keys every layer type has: ``lr_mult`` scales the layer's learning rate (fine-tuning)."""

    lr_mult: Annotated[float, Field(gt=0)] | None = Field(None, description="default: 1 (the parent's, when nested)")


class Conv(LayerSpec):
    """2-D convolution, optionally followed by batch norm and an activation."""

    type: Literal["conv"]
    filters: PosInt
    kernel: IntOrPair = 3
    stride: IntOrPair = 1
    padding: Literal["same", "valid"] | NonNegInt = "same"
    dilation: IntOrPair = 1
    groups: PosInt = 1
    bias: bool | None = Field(None, description="default: true unless batch_norm")
    activation: Activation = "none"
    batch_norm: bool = False

    @property
    def use_bias(self) -> bool:
        return (not self.batch_norm) if self.bias is None else self.bias


class MaxPool(LayerSpec):
    type: Literal["max_pool"]
    size: IntOrPair = 2
    stride: IntOrPair | None = Field(None, description="default: size")
    padding: NonNegInt = 0


class AvgPool(LayerSpec):
    type: Literal["avg_pool"]
    size: IntOrPair = 2
    stride: IntOrPair | None = Field(None, description="default: size")
    padding: NonNegInt = 0


class GlobalAvgPool(LayerSpec):
    type: Literal["global_avg_pool"]


class GlobalMaxPool(LayerSpec):
    type: Literal["global_max_pool"]


class Flatten(LayerSpec):
    type: Literal["flatten"]


class Dense(LayerSpec):
    type: Literal["dense"]
    units: PosInt
    activation: Activation = "none"
    bias: bool = True
    batch_norm: bool = False


class Dropout(LayerSpec):
    type: Literal["dropout"]
    rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5


class BatchNorm(LayerSpec):
    type: Literal["batch_norm"]


class ActivationLayer(LayerSpec):
    type: Literal["activation"]
    fn: Activation


class Repeat(LayerSpec):
    """``layers`` repeated ``times`` times, each copy with its own weights."""

    type: Literal["repeat"]
    times: Annotated[int, Field(gt=0, le=1000, strict=True)]
    layers: Annotated[list[Layer], Field(min_length=1)]


class Residual(LayerSpec):
    """``activation(x + f(x))``; a 1x1 conv shortcut (ResNet option B) when f changes the shape."""

    type: Literal["residual"]
    layers: Annotated[list[Layer], Field(min_length=1)]
    activation: Activation = "relu"


Layer = Annotated[
    Conv
    | MaxPool
    | AvgPool
    | GlobalAvgPool
    | GlobalMaxPool
    | Flatten
    | Dense
    | Dropout
    | BatchNorm
    | ActivationLayer
    | Repeat
    | Residual,
    Field(discriminator="type"),
]

LAYER_TYPES: dict[str, type[Strict]] = {
    cls.model_fields["type"].annotation.__args__[0]: cls
    for cls in Layer.__origin__.__args__  # type: ignore[attr-defined]
}

Repeat.model_rebuild()
Residual.model_rebuild()
