"""The uint8 image cache as training reads it: a tensor in RAM (pinned on CUDA) or a disk memmap."""

from __future__ import annotations

import warnings

import numpy as np
import torch


class CachedImages:
    """Batches of the uint8 cache ``(N, C, H, W)``: ``images[idx]`` for a tensor of indices."""

    def __init__(self, array: np.ndarray):
        self.memmap = isinstance(array, np.memmap)
        self.array = array
        self.shape = array.shape  # (N, C, H, W)
        if self.memmap:
            self.tensor = None
        else:
            with warnings.catch_warnings():  # Why: the cache is read-only by design; nothing writes to it
                warnings.simplefilter("ignore", UserWarning)
                self.tensor = torch.from_numpy(np.ascontiguousarray(array))

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx: torch.Tensor, *, pin: bool = False) -> torch.Tensor:
        """Rows ``idx`` copied ONCE into a new tensor (page-locked with ``pin``, for async copies to a GPU)."""
        out = torch.empty((len(idx), *self.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        if self.tensor is not None:
            torch.index_select(self.tensor, 0, idx, out=out)
        else:
            np.take(self.array, idx.numpy(), axis=0, out=out.numpy())
        return out

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[idx]
        return torch.from_numpy(np.asarray(self.array[idx.numpy()]))
