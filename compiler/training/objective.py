"""What training minimises and how: the loss (with smoothing and class weights) and the optimizer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from convspec.specs import Spec

from .transfer import param_groups

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_weights(spec: Spec, train_labels: np.ndarray, num_classes: int) -> np.ndarray | None:
    """Per-class loss weights: ``balanced`` is N / (K * count) over the training split (as
    scikit-learn's ``compute_class_weight``; an absent class counts as 1), a list is taken as given."""
    w = spec.training.loss.class_weights
    if w == "balanced":
        counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
        return counts.sum() / (num_classes * np.maximum(counts, 1))
    if isinstance(w, list):
        return np.asarray(w, dtype=np.float64)
    return None


def make_criterion(spec: Spec, weights: np.ndarray | None, device: torch.device) -> Criterion:
    """Cross-entropy (multiclass) or BCE-with-logits (binary) over logits, with smoothing and weights."""
    w = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    smoothing = spec.training.loss.label_smoothing
    if spec.task == "multiclass":
        return lambda logits, y: F.cross_entropy(logits, y, weight=w, label_smoothing=smoothing)

    def binary(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = y.float() * (1 - smoothing) + 0.5 * smoothing
        per = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        if w is None:
            return per.mean()
        wy = w[y]
        return (per * wy).sum() / wy.sum()

    return binary


def make_optimizer(spec: Spec, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The spec's optimizer over the model's trainable parameters, one group per ``lr_mult`` (``transfer``).

    Fused (one kernel per step for all parameters) on the CPU and CUDA, where torch has those kernels.
    """
    o = spec.training.optimizer
    params = param_groups(spec, model, o.lr)
    # Why fused: digits trains 20-30 % faster on 2 CPU cores (bench/time_to_accuracy.py) than with the
    # per-parameter default; the update is the same rule, rounded differently
    kw = {"fused": True} if fused_supported(model) else {}
    if o.type == "sgd":
        nesterov = o.nesterov and o.momentum > 0
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=nesterov, weight_decay=o.weight_decay, **kw
        )
    if o.type == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, **kw)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, **kw)


def fused_supported(model: torch.nn.Module) -> bool:
    """Whether every trainable parameter is a float tensor on a device with fused optimizer kernels."""
    params = [p for p in model.parameters() if p.requires_grad]
    devices = _fused_devices()
    return bool(params) and all(p.device.type in devices and p.is_floating_point() for p in params)


def _fused_devices() -> tuple[str, ...]:
    """The device types torch has fused optimizer kernels for (the CPU since torch 2.4)."""
    try:  # Why torch's private list: it is the one its optimizers check; a torch without it gets CUDA only
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return tuple(d for d in _get_fused_kernels_supported_devices() if d in ("cpu", "cuda"))
    except (ImportError, AttributeError):
        return ("cuda",)


def predicted_class(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Class indices from logits: the sign of the one binary logit, else the argmax."""
    return (logits[:, 0] > 0).long() if task == "binary" else logits.argmax(1)
