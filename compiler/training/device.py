"""Device and precision: ``auto`` means CUDA when present, bf16 where the GPU supports it."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from convspec.specs import SpecError
from convspec.specs.base import DEVICE_PATTERN
from convspec.specs.errors import Issue


@dataclass(frozen=True)
class Placement:
    """Where and how training runs."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None = fp32
    grad_scaler: bool  # fp16 needs loss scaling; bf16 does not

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]


def resolve(device: str = "auto", precision: str = "auto") -> Placement:
    """Turn the spec's ``training.device`` / ``training.precision`` into a Placement.

    Raises:
        SpecError: CUDA asked for but not available, or fp16/bf16 asked for on the CPU.
    """
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif not re.fullmatch(DEVICE_PATTERN, device):
        raise SpecError(Issue(f"must be auto, cpu, cuda or cuda:N (got {device!r})", ("training", "device")))
    else:
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise SpecError(
                    Issue(
                        f"device {device!r} asked for, but CUDA is not available here; use auto or cpu",
                        ("training", "device"),
                    )
                )
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise SpecError(
                    Issue(
                        f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)",
                        ("training", "device"),
                    )
                )
    if dev.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise SpecError(
                Issue(
                    f"precision {precision} needs a CUDA device; on the CPU use fp32 or auto", ("training", "precision")
                )
            )
        return Placement(dev, None, False)
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Placement(dev, dtype, dtype is torch.float16)


def placement_for(device: str, precision: str, local_rank: int | None = None) -> Placement:
    """:func:`resolve`, then, under torchrun, this process's own GPU (``cuda:LOCAL_RANK``)."""
    place = resolve(device, precision)
    if local_rank is None:
        return place
    if place.cuda:
        place = Placement(torch.device(f"cuda:{local_rank}"), place.amp_dtype, place.grad_scaler)
        torch.cuda.set_device(place.device)
    return place
