"""Chunks of the uint8 cache on the training device, the next one copied while the current one computes.

On CUDA each chunk is gathered into page-locked (pinned) host memory and copied with
``non_blocking=True`` on a side stream, one chunk ahead: the copy of chunk k+1 overlaps the
steps of chunk k, and the compute stream waits only on that copy's event. On CPU there is
nothing to overlap: the chunk is the gathered rows themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .cache import CachedImages


def _gather(images, idx: torch.Tensor, pin: bool) -> torch.Tensor:
    """Rows ``idx`` of the cache (a tensor, a :class:`CachedImages`, anything ``images[idx]`` works on)."""
    if isinstance(images, CachedImages):
        return images.take(idx, pin=pin)
    rows = images[idx]
    return rows.pin_memory() if pin else rows


def device_chunks(
    images, labels: torch.Tensor, perm: torch.Tensor, chunk: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(idx, x, y)`` per chunk of ``perm``: ``x`` the uint8 rows and ``y`` the labels, on ``device``."""
    starts = range(0, len(perm), chunk)
    if device.type != "cuda":
        for start in starts:
            idx = perm[start : start + chunk]
            yield idx, _gather(images, idx, False).to(device), labels[idx].to(device)
        return
    side = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)

    def issue(start: int):
        idx = perm[start : start + chunk]
        host_x, host_y = _gather(images, idx, True), labels[idx].pin_memory()
        with torch.cuda.stream(side):
            x = host_x.to(device, non_blocking=True)
            y = host_y.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        return idx, x, y, done

    pending = issue(0) if len(perm) else None
    for k in range(len(starts)):
        idx, x, y, done = pending
        pending = issue(starts[k + 1]) if k + 1 < len(starts) else None  # next copy runs during this chunk
        main.wait_event(done)
        x.record_stream(main)  # Why: allocated on the side stream, freed after the main stream's use
        y.record_stream(main)
        yield idx, x, y
