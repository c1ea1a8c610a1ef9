"""Device and precision: ``auto`` means CUDA when present, bf16 where the GPU supports it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from convspec.specs import Spec, SpecError
from convspec.specs.base import DEVICE_PATTERN
from convspec.specs.errors import Issue

from ..data.memory import available_bytes, gib


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


# What one training step holds, fp32: per parameter the weight, its gradient and two optimizer slots
# (Adam's); per activation element of a batch, the forward output kept for backward and its gradient.
BYTES_PER_PARAM = 16
BYTES_PER_ACTIVATION = 8


def own_rng(place: Placement):
    """A context in which training seeds and draws from torch's global generators (model init,
    dropout), restored afterwards: a caller's ``torch.manual_seed(1234)`` outlives ``train()``."""
    return torch.random.fork_rng(devices=[place.device.index or 0] if place.device.type == "cuda" else [])


def check_memory(spec: Spec, place: Placement, summary) -> None:
    """Refuse, before any data loads, a model whose training step cannot fit in memory.

    A lower bound from the spec's shapes (parameters, and each layer's output for a batch): a
    ``dense`` of 10**9 units or a conv with ``padding: 100000`` used to end in an allocator's
    traceback after the data had loaded. On a GPU only the parameters are counted (the model is
    built in RAM first); its own memory is CUDA's to report. ``summary``: ``spec.summary()``, or None.

    Raises:
        SpecError: naming ``model.layers`` (or ``training.batch_size``), the bytes needed and those free.
    """
    room = available_bytes()
    if summary is None or room is None:  # shapes unknown here (a backbone outside the table), or the room
        return
    params = summary.params * BYTES_PER_PARAM
    rows = summary.rows
    leaves = [r for i, r in enumerate(rows) if i + 1 == len(rows) or rows[i + 1].depth <= r.depth]
    per_image = sum(math.prod(r.shape) for r in leaves if r.shape)
    pixels = spec.input.channels * math.prod(spec.input.size)
    per_image += sum(s.kernel**2 * pixels for s in spec.preprocess if s.type == "denoise" and s.method == "median")
    batch = 0 if place.cuda else per_image * spec.training.batch_size * BYTES_PER_ACTIVATION
    if params + batch <= room:
        return
    what = f"{summary.params:,} parameters need {gib(params)} to train"
    key = ("model", "layers") if params > batch else ("training", "batch_size")
    if batch:
        what += f", and a batch of {spec.training.batch_size} needs {gib(batch)} of layer outputs"
        biggest = max((r for r in leaves if r.shape), key=lambda r: math.prod(r.shape), default=None)
        if biggest is not None and batch > params and 2 * math.prod(biggest.shape) > per_image:
            # Why name the layer: a conv's padding: 100000 was blamed on training.batch_size
            what += f" (most of it {biggest.name}'s output {tuple(biggest.shape)} per image)"
            key = tuple(biggest.path)
    raise SpecError(
        Issue(
            f"{what}; {gib(room)} is free (free memory, or the cgroup's limit): use fewer units or filters, "
            "a smaller input.size or training.batch_size",
            key,
            file=spec.source_file,
        )
    )


# Training work (3 x forward MACs x training images x epochs) under which a CPU run trains beside
# the warming export worker on one thread fewer, rather than pausing it: about the few seconds the
# warm-up takes on 2 cores (digits' 20 epochs are 33 GMAC, 2.4 s; one epoch of 8,000 photos at 224 px
# through bench/real_size.py's net 264 GMAC, 10 s).
SHORT_RUN_MACS = 100e9


class WorkerShare:
    """How a CPU run shares the machine with the export worker's warm-up, decided once from the spec.

    - A short run (under :data:`SHORT_RUN_MACS` of work) trains on one thread fewer throughout,
      beside the warm-up: pausing it would put the whole warm-up after training, on the critical path.
    - A longer run pauses the worker while it trains (``pause()``) and trains on every thread; the
      worker goes on (``resume()``) while the test split is scored and the pictures drawn.

    Why decided from the spec: a step's floating-point sums depend on the thread count. Leaving the
    worker a core until it said it was warm, then taking it back, made that moment, and the
    results, depend on timing (two runs of one spec differed by 0.3 % test accuracy after one epoch at
    224 px). Why not share cores in a long run: an OpenMP team waits for a core another process holds
    (each step several times slower). ``work_macs``: None when unknown (a backbone outside the table),
    taken as long. ``worker``: an :class:`..export.worker.ExportWorker` or None; on CUDA it runs freely.
    """

    def __init__(self, place: Placement, worker, work_macs: float | None) -> None:
        self.threads, self.fewer, self.paused = torch.get_num_threads(), False, None
        if worker is None or place.cuda:
            return
        if work_macs is not None and work_macs < SHORT_RUN_MACS:
            self.fewer = self.threads > 1
            if self.fewer:
                torch.set_num_threads(self.threads - 1)
        elif worker.pause():
            self.paused = worker

    def __enter__(self) -> WorkerShare:
        return self

    def __exit__(self, *exc) -> None:
        """Every thread back and the worker going, whatever happened in the loop."""
        if self.fewer:
            torch.set_num_threads(self.threads)
            self.fewer = False
        if self.paused is not None:
            self.paused.resume()
            self.paused = None
