"""Checkpoints: a state dict plus the spec, optimizer and loop state; never pickled modules.

Loaded with ``torch.load(weights_only=True)``, so a file crafted to run code on unpickling
is refused rather than executed.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from convspec.runtime.files import atomic_write
from convspec.specs.readfile import describe_mode

from . import checkpoint_format
from .checkpoint_format import CheckpointError
from .files import writing

FORMAT = 1


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temporary name, fsync, rename).

    Raises:
        WriteError: the folder is read-only, the disk is full, ... (nothing half-written is left).
    """
    with writing(path, "the checkpoint"):
        atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load(path: str | os.PathLike, *, resume: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check its structure.

    ``resume``: also check everything ``--resume`` restores (optimizer, epoch, history, rng...).

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, holds objects
            other than tensors and plain data (e.g. pickled code), or keys of the wrong type.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path}: is {describe_mode(path.stat().st_mode)}, not a checkpoint file")
    if not path.is_file():
        if not path.parent.is_dir():
            raise CheckpointError(f"{path.parent}: folder not found (looked for the checkpoint {path.name} in it)")
        raise CheckpointError(f"{path}: checkpoint not found")
    not_one = why_not_a_torch_file(path)
    if not_one:
        raise CheckpointError(f"{path}: not a readable checkpoint: {not_one}")
    try:
        with warnings.catch_warnings():
            # Why: torch warns about the pickle protocol of foreign files before refusing them.
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the file holds objects other than weights ({_unpickling_reason(e)}); "
            "convspec loads checkpoints with weights_only=True and never runs code from a checkpoint"
        ) from None
    except Exception as e:  # Why broad: any failure to read a user's file means it is not a readable checkpoint
        first = str(e).splitlines()[0].split(". ")[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint: corrupt, torch.load failed ({first})") from None
    checkpoint_format.check(state, path, resume=resume)
    return state


def why_not_a_torch_file(path: Path) -> str | None:
    """What the bytes say against ``path`` being a ``torch.save`` file (a zip, a legacy pickle); None if it may be.

    Why before torch.load: its messages for these cases are an EOFError, an errno or a pickle opcode.
    """
    try:
        with open(path, "rb") as f:
            size, head, is_zip = os.fstat(f.fileno()).st_size, f.read(4), zipfile.is_zipfile(f)
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    if size == 0:
        return "empty file (0 bytes)"
    if is_zip or head[:1] == b"\x80":  # a pickle (protocol 2+): torch.load's legacy format, or refused by it
        return None
    if head == b"PK\x03\x04":
        return f"truncated or corrupt ({size:,} bytes: a zip archive with no end, as a copy cut short leaves)"
    return (
        f"not a PyTorch checkpoint ({size:,} bytes; torch.save writes a zip archive, this is neither that nor a pickle)"
    )


def _unpickling_reason(e: Exception) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Trying to load unsupported", "Unsupported")) or "GLOBAL" in ln:
            return ln[:200]
    return lines[-1][:200] if lines else "unsafe content"
