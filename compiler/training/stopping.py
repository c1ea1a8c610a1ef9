"""Best-tracking and early stopping as a small pure class: which epoch is best, when to stop."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Monitor:
    """The monitored metric (``early_stopping.monitor``, default ``val_loss``) over epochs.

    ``update`` says whether an epoch improved on the best so far (by more than ``min_delta``);
    ``should_stop`` is true after ``patience`` epochs without improvement (never without a
    patience). Without a validation split, ``val_*`` falls back to the training loss or accuracy.
    """

    name: str = "val_loss"
    minimize: bool = True
    min_delta: float = 0.0
    patience: int | None = None
    best: float | None = None
    best_epoch: int = 0
    stale: int = 0

    @classmethod
    def from_spec(cls, early_stopping) -> Monitor:
        """From ``training.early_stopping`` (None: monitor val_loss, never stop early)."""
        if early_stopping is None:
            return cls()
        name = early_stopping.monitor
        minimize = early_stopping.mode == "min" if early_stopping.mode != "auto" else name.endswith("loss")
        return cls(name, minimize, early_stopping.min_delta, early_stopping.patience)

    def value(self, record: dict) -> float:
        if self.name in record:
            return record[self.name]
        return record["train_loss"] if self.minimize else record["train_accuracy"]

    def update(self, record: dict) -> bool:
        """Take one epoch's record; True when it is the new best."""
        value = self.value(record)
        if self.best is None:
            improved = not math.isnan(value)
        elif self.minimize:
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.stale = value, record["epoch"], 0
        else:
            self.stale += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience

    def describe(self) -> str:
        return f"{self.name} has not improved for {self.stale} epochs (best {self.best:.4f} at epoch {self.best_epoch})"

    def state(self) -> dict:
        inf = math.inf if self.minimize else -math.inf
        return {
            "best": {"value": inf if self.best is None else self.best, "epoch": self.best_epoch},
            "stale": self.stale,
        }

    def restore(self, state: dict) -> None:
        value = state["best"]["value"]
        self.best = None if math.isinf(value) else value
        self.best_epoch, self.stale = state["best"]["epoch"], state["stale"]
