"""``--resume RUN``: open a run folder's last checkpoint and decide which spec continues it.

The checkpoint's own spec is the truth. A given spec file or ``--set`` may change only what a
resumed run can honour (``epochs``, ``device``); anything else is refused with the difference.
"""

from __future__ import annotations

import os
from pathlib import Path

from convspec.runtime.compare import cv_folds
from convspec.specs import Spec, load_spec, load_spec_text
from convspec.specs.loader import revalidate
from convspec.specs.readfile import describe_mode

from ..export.checks import check_spec_file
from ..run import checkpoint
from ..run.checkpoint import CheckpointError
from ..run.files import check_output_folder
from ..run.folder import Run
from ..run.spec_diff import RESUMABLE, beyond_resumable, spec_diff

__all__ = ["RESUMABLE", "open_checkpoint", "resume_spec"]


def open_checkpoint(resume: str | os.PathLike) -> tuple[Run, dict]:
    """The run folder and its ``last.pt``; stale temp files of interrupted writes are removed."""
    run = Run(Path(resume))
    if not run.path.is_dir():
        raise CheckpointError(f"{run}: run folder not found" if not run.path.exists() else f"{run}: not a folder")
    if not run.last.exists():
        if cv_folds(run.path):
            raise CheckpointError(
                f"{run}: a cross-validation folder; continue it with: convspec train --folds K --resume {run} "
                "(K as it was started), or resume one fold, e.g. " + str(cv_folds(run.path)[0])
            )
        if not run.spec.exists():
            raise CheckpointError(f"{run}: not a convspec run folder (no last.pt, no spec.yaml)")
        raise CheckpointError(
            f"{run}: no last.pt: the run stopped before its first checkpoint; start it again with convspec train SPEC"
        )
    ckpt = checkpoint.load(run.last, resume=True)
    check_output_folder(run.path, "--resume")  # Why now: a read-only run must fail before an epoch, not after
    _check_outputs(run)
    if not os.path.lexists(run.split):
        raise CheckpointError(
            f"{run.split}: missing; a resumed run trains, validates and tests on the split it started with "
            f"(a new split could put trained-on images in the test split). Restore it, or start a new run: "
            f"convspec train {run.spec}"
        )
    for leftover in run.path.glob(".*.tmp"):  # temp files of writes a kill interrupted
        leftover.unlink(missing_ok=True)
    return run, ckpt


def resume_spec(run: Run, ckpt: dict, given: Spec | str | os.PathLike | None, overrides: list[str] | None) -> Spec:
    """The spec that continues ``run``: the checkpoint's, with what ``given`` / ``overrides`` may change.

    Checked before any epoch (a refusal after training would have rewritten the run): the run's
    ``spec.yaml`` and ``best.pt`` agree with ``last.pt``, and the epochs are not fewer than it has run.

    Raises:
        CheckpointError: the given spec or the overrides differ beyond epochs and device (with a diff);
            ``best.pt`` is another run's; fewer epochs than ``last.pt`` has trained.
        ExportError: a hand-edited ``spec.yaml`` (with a diff), as ``convspec export`` would refuse it.
    """
    saved = load_spec_text(ckpt["spec"], f"{run.last}[spec]")
    check_spec_file(run, saved, run.last)
    _check_best(run, saved)
    new = saved
    if given is not None or overrides:
        if given is None:
            new = load_spec_text(ckpt["spec"], f"{run.last}[spec]", overrides=overrides)
        else:
            new = revalidate(given, overrides) if isinstance(given, Spec) else load_spec(given, overrides=overrides)
        diff = spec_diff(saved, new)
        if beyond_resumable(diff):
            raise CheckpointError(
                f"{run}: cannot resume: the spec differs from the run's (only epochs and device may change):\n"
                + "\n".join(diff)
            )
    done = int(ckpt.get("epoch", 0))
    if new.training.epochs < done:
        raise CheckpointError(
            f"{run}: {run.last.name} has trained {done} epochs, more than training.epochs {new.training.epochs}; "
            f"to train on, resume with --set training.epochs=N where N > {done}"
        )
    return new


def _check_best(run: Run, saved: Spec) -> None:
    """Refuse a ``best.pt`` whose spec differs from ``last.pt``'s: a checkpoint copied from another run
    would mix two runs' histories, metrics and model in one folder."""
    if not run.best.is_file():
        return
    best = checkpoint.load(run.best)
    diff = beyond_resumable(spec_diff(load_spec_text(best["spec"], f"{run.best}[spec]"), saved, "best.pt", "last.pt"))
    if diff:
        raise CheckpointError(
            f"{run}: best.pt and last.pt are not the same run's (their specs differ); put back the run's own "
            "checkpoints, or start a new run\n" + "\n".join(diff)
        )


def _check_outputs(run: Run) -> None:
    """Refuse, before any epoch, an output of the run that a folder, FIFO or device stands in for."""
    for path in (run.last, run.best, run.metrics, run.results, run.report, run.curves, run.confusion, run.onnx):
        if os.path.lexists(path) and not path.is_file():
            what = describe_mode(path.stat().st_mode) if path.exists() else "a broken link"
            raise CheckpointError(f"{path}: is {what}; remove it so that the resumed run can write {path.name}")
