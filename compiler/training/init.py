"""``training.init``: start a run from another run's weights, a checkpoint or a ``.safetensors`` file.

Tensors are copied by name where the shapes match; the rest (the head when the class count
differs, a layer whose filters changed) keep their fresh initialisation and are listed. The
preprocessing's buffers are never copied: they follow this spec (its ``normalize`` step), not
the source's. Files are read safely: ``weights_only`` checkpoints, or safetensors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from ruamel.yaml import YAML

from convspec.specs import ConvspecError
from convspec.specs.extras import require
from convspec.specs.readfile import FileReadError, check_regular

from ..run import checkpoint
from ..run.folder import Run

SKIP = ("preprocess.",)  # state-dict prefixes that belong to this spec, not to the source


class InitError(ConvspecError):
    """``training.init`` names nothing usable, or weights made for other inputs."""


def source_file(path: str | os.PathLike) -> Path:
    """The file ``training.init`` reads: a run folder's best.pt (else last.pt), or the file itself.

    Raises:
        InitError: the path does not exist, or is a folder without a checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        run = Run(p)
        for f in (run.best, run.last):
            if f.is_file():
                return f
        raise InitError(f"training.init: {p}: not a convspec run folder (no best.pt or last.pt in it)")
    if not p.exists():
        raise InitError(f"training.init: {p}: no such run folder or file")
    return p


def read_source(path: str | os.PathLike) -> tuple[Path, dict[str, torch.Tensor], dict | None]:
    """``(file, state dict, the source spec as plain data or None)`` of a ``training.init`` path."""
    f = source_file(path)
    if f.suffix == ".safetensors":
        st = require("safetensors.torch", "timm", "training.init from .safetensors")
        try:
            check_regular(f, "weights")  # Why: safetensors opens a FIFO and waits for a writer forever
        except FileReadError as e:
            raise InitError(f"training.init: {e}") from None
        try:
            return f, st.load_file(str(f)), None
        except Exception as e:  # Why: safetensors raises its own error types for truncated or foreign files
            raise InitError(f"training.init: {f}: not a readable .safetensors file ({str(e)[:200]})") from None
    ckpt = checkpoint.load(f)
    spec = YAML(typ="safe", pure=True).load(ckpt["spec"]) if isinstance(ckpt.get("spec"), str) else None
    return f, ckpt["model"], spec if isinstance(spec, dict) else None


def _check_inputs(model, f: Path, src: dict[str, torch.Tensor], src_spec: dict | None) -> None:
    """Refuse weights made for another channel count, or another input size that changes a dense layer."""
    c, h, w = model.input_shape
    inp = (src_spec or {}).get("input") or {}
    src_c = inp.get("channels")
    if src_c is None:  # no spec (safetensors): the first conv weight's in-channels tell
        first = next((k for k, v in model.state_dict().items() if v.ndim == 4 and not k.startswith(SKIP)), None)
        if first is not None and first in src and src[first].ndim == 4:
            src_c = src[first].shape[1]
    if src_c is not None and src_c != c:
        raise InitError(
            f"training.init: {f} was trained on {src_c}-channel images; this spec has input.channels {c} "
            "(use a source with the same channel count)"
        )
    size = inp.get("size")
    if size is None or list(size) == [h, w]:
        return
    for k, v in model.state_dict().items():
        s = src.get(k)
        if s is not None and v.ndim == 2 and s.ndim == 2 and s.shape[1] != v.shape[1]:
            raise InitError(
                f"training.init: {f} was trained at input.size {list(size)}; this spec has [{h}, {w}], which "
                f"changes {k} from {list(s.shape)} to {list(v.shape)} (use the same input.size, or a global pool "
                "before the dense layers)"
            )


def init_from(model: torch.nn.Module, path: str | os.PathLike, log: Callable[[str], None]) -> dict:
    """Copy the tensors of ``path`` into ``model`` by name where the shapes match.

    Args:
        model: a freshly built :class:`~convspec.compiler.model.builder.ConvspecModel`.
        path: a run folder, a convspec checkpoint or a ``.safetensors`` state dict.
        log: where the summary line goes.

    Returns:
        ``{"source", "file", "copied", "fresh", "unused"}``: copied is a count; fresh lists each
        tensor that kept its initialisation (``name``, ``shape``, ``source_shape``: None when the
        source lacks it); unused lists the source's tensors this model has no place for.

    Raises:
        InitError: nothing usable at ``path``, another channel count or input size, or no
            tensor matches at all. CheckpointError for an unreadable or unsafe checkpoint.
    """
    f, src, src_spec = read_source(path)
    _check_inputs(model, f, src, src_spec)
    target = model.state_dict()
    merged, fresh, copied = dict(target), [], 0
    for k, v in target.items():
        if k.startswith(SKIP):
            continue
        s = src.get(k)
        if s is not None and tuple(s.shape) == tuple(v.shape):
            merged[k] = s
            copied += 1
        else:
            fresh.append({"name": k, "shape": list(v.shape), "source_shape": None if s is None else list(s.shape)})
    if copied == 0:
        raise InitError(
            f"training.init: {f}: no tensor matches this model by name and shape (first of the model: "
            f"{next(iter(k for k in target if not k.startswith(SKIP)), 'none')}; of the file: "
            f"{next(iter(src), 'none')})"
        )
    model.load_state_dict(merged)
    unused = [k for k in src if k not in target and not k.startswith(SKIP)]
    info = {"source": str(path), "file": str(f), "copied": copied, "fresh": fresh, "unused": unused}
    log(f"init from {f}: copied {copied} tensors; fresh: {describe_fresh(fresh)}; unused: {len(unused)}")
    return info


def describe_fresh(fresh: list[dict]) -> str:
    """``head.linear.weight [2, 32] (source [10, 32]), ...`` or ``none``."""
    if not fresh:
        return "none"
    return ", ".join(
        f"{t['name']} {t['shape']}" + (f" (source {t['source_shape']})" if t["source_shape"] else " (not in source)")
        for t in fresh
    )
