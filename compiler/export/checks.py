"""Checks export makes before its slow work: the run's spec file agrees with its checkpoint,
and the run folder can take ``model.onnx``."""

from __future__ import annotations

from pathlib import Path

from convspec.specs import Spec, load_spec_text

from ..run.files import check_output_folder
from ..run.folder import Run
from ..run.spec_diff import beyond_resumable, spec_diff
from .errors import ExportError

MAX_SPEC_BYTES = 1 << 20  # as the spec loader's limit


def check_spec_file(run: Run, spec: Spec, ckpt: Path) -> None:
    """Refuse a ``spec.yaml`` that differs from the checkpoint's spec (beyond epochs and device).

    The checkpoint's spec is the one the weights were trained with, so it is the truth: a
    hand-edited ``spec.yaml`` (another input size, say) would otherwise export a model whose
    preprocessing, metadata and test metrics disagree with its weights.

    Raises:
        ExportError: with the difference as ``-checkpoint`` / ``+spec.yaml`` lines.
        SpecError: ``spec.yaml`` is not a valid spec.
    """
    path = run.spec
    if not path.exists() and not path.is_symlink():
        return  # the checkpoint's spec is used; nothing to compare
    if not path.is_file():
        raise ExportError(f"{path}: not a regular file; remove it (the checkpoint {ckpt.name} holds the spec)")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise ExportError(f"{path}: larger than {MAX_SPEC_BYTES >> 20} MiB; not a spec written by convspec train")
    written = load_spec_text(path.read_bytes(), str(path), base_dir=str(path.parent))
    diff = beyond_resumable(spec_diff(spec, written, ckpt.name, path.name))
    if diff:
        raise ExportError(
            f"{path}: differs from the spec in {ckpt.name}, which the weights were trained with; undo the edit "
            f"(or delete {path.name}: the checkpoint's spec is used). To train the edited spec: convspec train "
            f"{path}\n" + "\n".join(diff)
        )


def check_run_writable(run: Run) -> None:
    """Refuse a run folder that cannot take ``model.onnx`` (read-only, full, a folder in the way)."""
    for target in (run.onnx, run.onnx_int8, run.export_json):
        if target.is_dir() or (target.exists() and not target.is_file()):
            kind = "a folder" if target.is_dir() else "not a regular file"
            raise ExportError(f"{target}: is {kind}; remove it so that convspec export can write {target.name}")
    check_output_folder(run.path, "export into")
