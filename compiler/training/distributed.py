"""torchrun integration: one process per device, gloo on CPU and nccl on CUDA.

``torchrun --nproc-per-node N -m convspec.compiler train SPEC`` sets RANK / WORLD_SIZE /
LOCAL_RANK; outside torchrun everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(d: Dist, device: torch.device) -> None:
    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(d: Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (run folder names, stop decisions)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(d: Dist, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (loss sums, correct counts, sample counts)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sync_buffers(d: Dist, module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank, before evaluating."""
    if not d.enabled:
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def shard(perm: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's part of an epoch's permutation, padded so every rank takes as many steps
    (as torch's DistributedSampler does)."""
    if not d.enabled:
        return perm
    n = -(-len(perm) // d.world) * d.world
    padded = torch.cat([perm, perm[: n - len(perm)]]) if n > len(perm) else perm
    return padded[d.rank :: d.world]
