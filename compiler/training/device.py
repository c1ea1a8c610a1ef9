"""Device and precision: ``auto`` means CUDA when present, bf16 where the GPU supports it."""

from __future__ import annotations

import re
import time
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


class CoreShare:
    """On the CPU, train on one thread fewer while the export worker warms up, then on all of them.

    Why: an OpenMP team whose threads wait for a core that another process holds runs each step
    several times slower than a team one thread smaller (digits on 2 cores). ``worker`` is anything
    with a ``warming()`` that never blocks (:class:`..export.worker.ExportWorker`); :meth:`check`,
    called after every step, asks it at most every :attr:`EVERY_S`; leaving the ``with`` gives
    every thread back.
    """

    EVERY_S = 0.1

    def __init__(self, place: Placement, worker) -> None:
        self.threads = torch.get_num_threads()
        self.worker = worker if worker is not None and not place.cuda and self.threads > 1 else None
        self.next_check = 0.0
        if self.worker is not None and self.worker.warming():
            torch.set_num_threads(self.threads - 1)
        else:
            self.worker = None

    def __enter__(self) -> CoreShare:
        return self

    def __exit__(self, *exc) -> None:
        """All the threads back, warm or not: what comes after the loop (and a caller's code) gets them."""
        if self.worker is not None:
            torch.set_num_threads(self.threads)
            self.worker = None

    def check(self) -> None:
        if self.worker is None or time.perf_counter() < self.next_check:
            return
        self.next_check = time.perf_counter() + self.EVERY_S
        if not self.worker.warming():
            torch.set_num_threads(self.threads)
            self.worker = None
