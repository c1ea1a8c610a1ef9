"""Layer specs: one Pydantic model per layer type, grouped as a discriminated union on ``type``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from pydantic import Strict as PydanticStrict

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


class Backbone(LayerSpec):
    """A pretrained image network from timm (``convspec[timm]``); only as the first layer.

    ``weights``: ``none`` (random), ``pretrained`` (timm's hub download) or a path to a
    ``.safetensors`` / ``.pth`` state dict (relative to the spec file's folder).
    ``trainable``: true, false (frozen, batch norm statistics included) or N (only the last
    N stages train). ``output``: ``pooled`` (flat, one value per channel) or ``features``
    (the last feature map).
    """

    type: Literal["backbone"]
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    weights: str = Field("none", min_length=1, description="none | pretrained | a path to a .safetensors or .pth file")
    # Why a strict bool: in lax mode ``trainable: 1`` would read as true (all stages), not 1 stage.
    trainable: Annotated[bool, PydanticStrict()] | PosInt = Field(True, union_mode="left_to_right")
    output: Literal["pooled", "features"] = "pooled"

    @property
    def weights_file(self) -> str | None:
        """The weights path, or None for ``none`` / ``pretrained``."""
        return None if self.weights in ("none", "pretrained") else self.weights


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
    Backbone
    | Conv
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
