"""``--resume RUN``: open a run folder's last checkpoint and decide which spec continues it.

The checkpoint's own spec is the truth. A given spec file or ``--set`` may change only what a
resumed run can honour (``epochs``, ``device``); anything else is refused with the difference.
"""

from __future__ import annotations

import os
from pathlib import Path

from convspec.specs import Spec, load_spec, load_spec_text

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
        if not run.spec.exists():
            raise CheckpointError(f"{run}: not a convspec run folder (no last.pt, no spec.yaml)")
        raise CheckpointError(
            f"{run}: no last.pt: the run stopped before its first checkpoint; start it again with convspec train SPEC"
        )
    ckpt = checkpoint.load(run.last, resume=True)
    check_output_folder(run.path, "--resume")  # Why now: a read-only run must fail before an epoch, not after
    for leftover in run.path.glob(".*.tmp"):  # temp files of writes a kill interrupted
        leftover.unlink(missing_ok=True)
    return run, ckpt


def resume_spec(run: Run, ckpt: dict, given: Spec | str | os.PathLike | None, overrides: list[str] | None) -> Spec:
    """The spec that continues ``run``: the checkpoint's, with what ``given`` / ``overrides`` may change.

    Raises:
        CheckpointError: the given spec or the overrides differ beyond epochs and device (with a diff).
    """
    saved = load_spec_text(ckpt["spec"], str(run.spec))
    if given is None and not overrides:
        return saved
    if given is None:
        new = load_spec_text(ckpt["spec"], str(run.spec), overrides=overrides)
    else:
        new = given if isinstance(given, Spec) else load_spec(given, overrides=overrides)
    diff = spec_diff(saved, new)
    if beyond_resumable(diff):
        raise CheckpointError(
            f"{run}: cannot resume: the spec differs from the run's (only epochs and device may change):\n"
            + "\n".join(diff)
        )
    return new
