"""The training state: everything a checkpoint holds and ``--resume`` restores.

Model, optimizer, grad scaler, the random generators (shuffle, augmentation, torch's global and
CUDA's), the history of epoch records, the best-tracking monitor and the plateau multiplier.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..run.checkpoint_format import CheckpointError, load_weights
from .schedule import Plateau
from .stopping import Monitor


@dataclass
class TrainState:
    """What changes as training runs; ``to_checkpoint()`` / ``restore()`` round-trip it exactly."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    shuffle_gen: torch.Generator
    aug_gen: torch.Generator
    monitor: Monitor
    plateau: Plateau | None = None
    history: list[dict] = field(default_factory=list)
    epoch: int = 0  # last finished epoch
    init: dict | None = None  # what training.init copied (init.init_from's summary), kept across resumes
    train_s: float = 0.0  # training wall time up to the last finished epoch, over every session of the run
    images_seen: int = 0  # training images up to then (its images/s counts the epochs before a resume too)

    def lr_scale(self) -> float:
        return self.plateau.scale if self.plateau is not None else 1.0

    def to_checkpoint(self, spec_yaml: str, class_names: list[str], device: torch.device) -> dict:
        """A dict of tensors and plain data (``torch.load(weights_only=True)`` reads it back)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "spec": spec_yaml,
            "epoch": self.epoch,
            "class_names": class_names,
            "history": self.history,
            "init": self.init,
            "elapsed": {"train_s": self.train_s, "images_seen": self.images_seen},
            **self.monitor.state(),
            "plateau": self.plateau.state() if self.plateau is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "shuffle": self.shuffle_gen.get_state(),
                "augment": self.aug_gen.get_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
        }

    def restore(self, ckpt: dict, device: torch.device, path: Path | str = "last.pt") -> None:
        """Load a checkpoint written by :meth:`to_checkpoint` (the inverse, exactly).

        Raises:
            CheckpointError: naming ``path`` and the part (weights, optimizer, generators) that does not fit.
        """
        load_weights(self.model, ckpt["model"], Path(path))
        with _part(path, "optimizer"):
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        with _part(path, "rng"):
            torch.set_rng_state(rng["torch"])
            self.shuffle_gen.set_state(rng["shuffle"])
            self.aug_gen.set_state(rng["augment"])
            if device.type == "cuda" and rng.get("cuda") is not None:
                torch.cuda.set_rng_state(rng["cuda"], device)
        self.history = list(ckpt["history"])
        self.monitor.restore(ckpt)
        if self.plateau is not None and ckpt.get("plateau"):
            self.plateau = Plateau(self.plateau.factor, self.plateau.patience, **ckpt["plateau"])
        self.epoch = ckpt["epoch"]
        self.init = ckpt.get("init")
        elapsed = ckpt.get("elapsed") or {"train_s": 0.0, "images_seen": 0}  # older checkpoints: this session's
        self.train_s, self.images_seen = float(elapsed["train_s"]), int(elapsed["images_seen"])


@contextlib.contextmanager
def _part(path, what: str):
    """A checkpoint part torch refuses to restore -> CheckpointError naming the file and the part."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: {what}: does not fit this run ({reason})") from None
