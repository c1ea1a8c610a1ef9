"""The decoded data set: images, labels, file ids and the split, as training sees them. Torch-free."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Decoded images with labels and a train/val/test split.

    Attributes:
        class_names: class names in label order (label ``i`` is ``class_names[i]``).
        images: ``(N, C, H, W)`` uint8, read-only; an array in RAM or a ``np.memmap``.
        labels: ``(N,)`` int64 class indices.
        files: path of each image (``digits:17`` for the builtin digits' 18th image).
        splits: ``"train"``, ``"val"``, ``"test"`` -> sorted int64 indices into the arrays.
        bad_files: ``(path, reason)`` of each file skipped because it did not decode.
        root: the folder file ids are relative to (None for builtin data).
    """

    class_names: list[str]
    images: np.ndarray
    labels: np.ndarray
    files: list[str]
    splits: dict[str, np.ndarray]
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    root: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def file_ids(self) -> list[str]:
        """Names that identify each file independently of where the data lives.

        Paths relative to :attr:`root` with ``/`` separators (absolute when outside it);
        builtin ids (``digits:17``) as they are. ``split.json`` stores these.
        """
        return [self.file_id(i) for i in range(len(self.files))]

    def file_id(self, i: int) -> str:
        """The id of file ``i`` (see :meth:`file_ids`), without computing every other one."""
        return self.files[i] if self.root is None else file_id(self.files[i], self.root)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split: ``{"train": {"cat": 40, "dog": 38}, ...}``."""
        out = {}
        for split in SPLITS:
            per = np.bincount(self.labels[self.splits.get(split, np.empty(0, np.int64))], minlength=self.num_classes)
            out[split] = {name: int(n) for name, n in zip(self.class_names, per, strict=True)}
        return out

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of one split, as writable in-memory copies: ``(n, C, H, W)``, ``(n,)``."""
        return self.rows(split)[:], self.labels[self.splits[split]].copy()

    def rows(self, split: str) -> SplitRows:
        """One split's images, read when indexed (see :class:`SplitRows`)."""
        return SplitRows(self.images, self.splits[split])


class SplitRows:
    """Rows ``idx`` of ``images`` without their copy: ``len``, ``shape``, ``[i]`` (one image) and
    ``[a:b]`` (those images, copied then).

    Why: ``images[idx]`` copies a whole split at once (a 10 % test split of 50,000 photos at 224 px
    is 750 MB, read from the disk memmap) where its readers want 32 images (the errors grid) or one
    batch at a time (scoring).
    """

    def __init__(self, images: np.ndarray, idx: np.ndarray):
        self.images, self.idx = images, np.asarray(idx, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.idx), *self.images.shape[1:])

    def __getitem__(self, key: int | slice) -> np.ndarray:
        return np.asarray(self.images[self.idx[key]])

    def __reduce__(self):
        """Pickled (to the export worker) as its rows alone, never the whole data set behind them."""
        return np.asarray, (self[:],)


def file_id(path: str, root: str) -> str:
    """``path`` relative to ``root`` with ``/`` separators, or absolute when outside it."""
    rel = os.path.relpath(path, root)
    if rel.startswith(os.pardir + os.sep) or rel == os.pardir or os.path.isabs(rel):
        return path.replace(os.sep, "/")
    return rel.replace(os.sep, "/")
