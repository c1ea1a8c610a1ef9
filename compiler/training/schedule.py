"""Learning-rate schedules as one pure function of the step: ``lr_at(step)``.

Why hand-written: warmup + {step, cosine, onecycle} is a few lines as a pure function, which
makes resume trivial (no scheduler state) and is easy to test. ``plateau`` reacts to
validation loss, so it is a multiplier the loop updates once per epoch.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, base_lr: float, total_steps: int, steps_per_epoch: int, scheduler) -> float:
    """Learning rate at optimizer step ``step`` (0-based) for the spec's ``training.scheduler``."""
    warmup = int(round(scheduler.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    kind = scheduler.type
    t = step - warmup
    span = max(total_steps - warmup, 1)
    if kind in ("none", "plateau"):
        return base_lr
    if kind == "step":
        return base_lr * scheduler.gamma ** ((step // steps_per_epoch) // scheduler.step_size)
    if kind == "cosine":
        return scheduler.min_lr + (base_lr - scheduler.min_lr) * 0.5 * (1 + math.cos(math.pi * min(t / span, 1.0)))
    if kind == "onecycle":
        # Why: torch's OneCycleLR shape (cosine up from lr/25 over pct_start, down to lr/1e4).
        up = max(scheduler.pct_start * span - 1, 1.0)  # step of the peak, as torch counts
        start, end = base_lr / 25, base_lr / 25 / 1e4
        if t <= up:
            return start + (base_lr - start) * 0.5 * (1 - math.cos(math.pi * t / up))
        frac = min((t - up) / max(span - 1 - up, 1.0), 1.0)
        return end + (base_lr - end) * 0.5 * (1 + math.cos(math.pi * frac))
    raise ValueError(f"unknown scheduler {kind!r}")


class Plateau:
    """Multiply the lr by ``factor`` after ``patience`` epochs without a lower validation loss."""

    def __init__(self, factor: float, patience: int, scale: float = 1.0, best: float = math.inf, bad: int = 0):
        self.factor, self.patience = factor, patience
        self.scale, self.best, self.bad = scale, best, bad

    def update(self, val_loss: float) -> None:
        if val_loss < self.best - 1e-12:
            self.best, self.bad = val_loss, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            self.scale *= self.factor
            self.bad = 0

    def state(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}
