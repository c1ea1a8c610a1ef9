"""What a checkpoint must hold, checked before anything uses it: crafted or damaged files are named.

``torch.load(weights_only=True)`` guarantees only tensors and plain data; these Pydantic models
check that the data has the shape ``TrainState.to_checkpoint`` writes (keys, types, an epoch
that matches the history), and :func:`load_weights` that the weights fit the model the spec
builds, naming the first tensor that does not. Every failure is one :class:`CheckpointError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, InstanceOf, ValidationError, field_validator, model_validator

from convspec.specs import ConvspecError
from convspec.specs.classes import class_names_problem
from convspec.specs.errors import format_path

Tensor = InstanceOf[torch.Tensor]


class CheckpointError(ConvspecError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe, or from another spec."""


class _Part(BaseModel):
    # Why strict: "epoch": "3" or true must be refused, not coerced; extra keys are tolerated
    # (the monitor adds its own, and newer versions may add more).
    model_config = ConfigDict(strict=True, extra="allow", arbitrary_types_allowed=True)


class Weights(_Part):
    """What export needs: the weights and the spec they were trained with."""

    format: Literal[1]
    model: dict[str, Tensor]
    spec: str
    class_names: list[str] | None = None

    @field_validator("class_names")
    @classmethod
    def _names(cls, names: list[str] | None) -> list[str] | None:
        problem = class_names_problem(names) if names is not None else None
        if problem:
            raise ValueError(f"class_names: {problem}")
        return names


class _Best(_Part):
    value: float
    epoch: int = Field(ge=0)


class _Plateau(_Part):
    scale: float
    best: float
    bad: int = Field(ge=0)


class _Elapsed(_Part):
    train_s: float = Field(ge=0, allow_inf_nan=False)
    images_seen: int = Field(ge=0)


class _Rng(_Part):
    torch: Tensor
    shuffle: Tensor
    augment: Tensor
    cuda: Tensor | None = None


class _Optimizer(_Part):
    state: dict[int, dict[str, Any]]
    param_groups: list[dict[str, Any]]


class Resumable(Weights):
    """What ``--resume`` needs besides the weights: optimizer, loop state, random generators."""

    optimizer: _Optimizer
    scaler: dict[str, Any]
    epoch: int = Field(ge=0)
    history: list[dict[str, Any]]
    best: _Best
    stale: int = Field(ge=0)
    plateau: _Plateau | None = None
    rng: _Rng
    elapsed: _Elapsed | None = None  # absent in checkpoints written before it was kept

    @model_validator(mode="after")
    def _epoch_matches_history(self):
        if len(self.history) != self.epoch:
            raise ValueError(f"epoch is {self.epoch} but history holds {len(self.history)} epochs")
        return self


def check(state: Any, path: Path, *, resume: bool = False) -> None:
    """Check a loaded checkpoint's structure (``resume``: everything ``--resume`` restores).

    Raises:
        CheckpointError: the first problem, as ``PATH: not a convspec checkpoint: KEY: what is wrong``.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a convspec checkpoint (a {type(state).__name__}, expected a dict)")
    try:
        (Resumable if resume else Weights).model_validate(state)
    except ValidationError as e:
        raise CheckpointError(f"{path}: not a convspec checkpoint: {_first(e)}") from None


def _first(e: ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    key = format_path(tuple(err["loc"])) or "(top level)"
    if err["type"] == "missing":
        return f"{key}: missing"
    msg = err["msg"]
    msg = msg[:1].lower() + msg[1:]
    got = err.get("input")
    shown = f"{type(got).__name__} {_short(got)}" if not isinstance(got, dict) else "a dict"
    return f"{key}: {msg} (got {shown})" if err["type"] != "value_error" else f"{msg.removeprefix('value error, ')}"


def _short(x: Any) -> str:
    text = repr(x) if not isinstance(x, torch.Tensor) else f"of shape {tuple(x.shape)}"
    return text if len(text) <= 40 else text[:37] + "..."


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """``model.load_state_dict(weights)``, naming the first tensor that is missing, extra or misshapen.

    Raises:
        CheckpointError: e.g. ``best.pt: the weights do not fit the spec: body.0.conv.weight has
            shape (16, 1, 3, 3) in the checkpoint, (32, 1, 3, 3) in the model the spec builds``.
    """
    own = model.state_dict()
    problem = None
    for name, t in own.items():
        if name not in weights:
            problem = f"{name} is missing from the checkpoint"
        elif tuple(weights[name].shape) != tuple(t.shape):
            problem = (
                f"{name} has shape {tuple(weights[name].shape)} in the checkpoint, "
                f"{tuple(t.shape)} in the model the spec builds"
            )
        elif weights[name].dtype.is_floating_point != t.dtype.is_floating_point:
            problem = f"{name} is {weights[name].dtype} in the checkpoint, {t.dtype} in the model"
        if problem:
            break
    if problem is None:
        extra = [k for k in weights if k not in own]
        if extra:
            problem = f"the checkpoint has {len(extra)} tensors the model does not (first: {extra[0]})"
    if problem is None:
        try:
            model.load_state_dict(weights)
        except (RuntimeError, TypeError, ValueError) as e:
            problem = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    if problem:
        raise CheckpointError(f"{path}: the weights do not fit the spec: {problem}")
