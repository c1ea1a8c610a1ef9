"""Training's error types, in a leaf module (the loop, tuning and the CLI all use them)."""

from __future__ import annotations

from convspec.specs import ConvspecError


class TrainingInterrupted(ConvspecError):
    """Ctrl-C during training: last.pt holds the last finished epoch."""

    exit_code = 130  # Why: the shell's convention for SIGINT


class TrainingDiverged(ConvspecError):
    """The training loss became NaN or infinite; last.pt holds the last good epoch."""


class BatchOfOne(ConvspecError):
    """Batch norm met a training batch of one image where it has one value per channel (torch refuses)."""
