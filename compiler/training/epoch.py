"""One epoch of training and one pass of evaluation: the functions the loop and the benchmarks call.

``train_epoch`` keeps the loss and the correct count on the device and reads them once, at the
end of the epoch (the progress bar reads at most a few times per second): a GPU never waits
for the host inside an epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from convspec.specs import Spec

from ..data.augment import Augmenter, augmented_batches
from ..data.cache import CachedImages
from ..data.memory import images_per_batch
from . import distributed, metrics
from .device import Placement
from .distributed import Dist
from .errors import BatchOfOne
from .objective import Criterion, predicted_class
from .schedule import lr_at
from .state import TrainState
from .transfer import Freeze


@dataclass
class Setup:
    """The fixed parts of a run: what every epoch reads and nothing changes."""

    spec: Spec
    place: Placement
    dd: Dist
    images: CachedImages  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    splits: dict[str, np.ndarray]
    net: torch.nn.Module  # the model, or its DDP / torch.compile wrapper
    criterion: Criterion
    augment: Augmenter | None
    batch: int  # per process
    steps_per_epoch: int
    freeze: Freeze | None = None  # training.freeze: which layers, until when

    @property
    def total_steps(self) -> int:
        return self.spec.training.epochs * self.steps_per_epoch


def without_lone_last(perm: torch.Tensor, batch: int) -> torch.Tensor:
    """An epoch's order without a last batch of one image (a random one: the order is shuffled).

    Why: batch norm over a batch of one fails on flat features or 1x1 maps (torch raises), and one
    image's gradient is a noisy step anyway (``drop_last`` for that one batch only).
    """
    return perm[:-1] if batch > 1 and len(perm) > 1 and len(perm) % batch == 1 else perm


def _batch_of_one(e: ValueError, images: int, batch: int) -> BatchOfOne:
    """torch's refusal of batch norm over a one-image batch, as what to change (a backbone at a small
    input size has 1x1 maps that the spec's own shapes do not show)."""
    why = "the training split holds 1 image; give it more" if images == 1 else "use training.batch_size 2 or more"
    shape = str(e).rsplit("input size ", 1)[-1]
    return BatchOfOne(
        f"batch norm cannot train on a batch of one image (its input {shape}: one value per channel); {why}"
    )


def train_epoch(setup: Setup, state: TrainState, epoch: int, bar=None) -> tuple[dict, int]:
    """Train one epoch (1-based) over the training split; return its record and the images seen."""
    spec, place, dd = setup.spec, setup.place, setup.dd
    setup.net.train()
    if setup.freeze is not None:
        setup.freeze.apply(epoch)
    train_idx = torch.from_numpy(setup.splits["train"])
    perm = without_lone_last(
        distributed.shard(train_idx[torch.randperm(len(train_idx), generator=state.shuffle_gen)], dd), setup.batch
    )
    loss_sum = torch.zeros((), dtype=torch.float64, device=place.device)
    correct = torch.zeros((), dtype=torch.int64, device=place.device)
    count = 0
    base_lr, sched = spec.training.optimizer.lr, spec.training.scheduler
    total, per_epoch = setup.total_steps, setup.steps_per_epoch
    t0 = time.perf_counter()
    if bar is not None:
        bar.start_epoch(epoch)
    batches = augmented_batches(
        setup.images, setup.labels, perm, setup.batch, place.device, setup.augment, state.aug_gen
    )
    for i, (idx, x, y) in enumerate(batches):  # x: (B, C, H, W) float in [0, 255], augmented
        step = (epoch - 1) * per_epoch + i
        lr = lr_at(step, base_lr=base_lr, total_steps=total, steps_per_epoch=per_epoch, scheduler=sched)
        for group in state.optimizer.param_groups:
            group["lr"] = lr * state.lr_scale() * group.get("lr_mult", 1.0)
        try:
            logits, loss = train_step(setup, state, x, y)
        except ValueError as e:
            if not str(e).startswith("Expected more than 1 value per channel when training"):
                raise
            raise _batch_of_one(e, len(perm), setup.batch) from None
        with torch.no_grad():
            loss_sum += loss.detach() * len(idx)
            correct += (predicted_class(logits.detach(), spec.task) == y).sum()
        count += len(idx)
        if bar is not None:
            bar.step(
                lambda s=loss_sum, c=correct, n=count: (s.item() / n, c.item() / n, n / (time.perf_counter() - t0))
            )
    loss_total, correct_total, n = distributed.all_sum(
        dd, [loss_sum.item(), float(correct.item()), count], place.device
    )
    # Why: each rank's last step updated its own batch-norm running stats; rank 0's are the model's
    # (DDP broadcasts them, checkpoints save them). Without this, ranks see different val metrics,
    # and plateau / best / early stopping disagree between ranks.
    distributed.sync_buffers(dd, state.model)
    dt = time.perf_counter() - t0
    record = {
        "epoch": epoch,
        "lr": state.optimizer.param_groups[0]["lr"] / state.optimizer.param_groups[0].get("lr_mult", 1.0),
        "train_loss": loss_total / n,
        "train_accuracy": correct_total / n,
        "time_s": dt,
        "images_per_s": n / dt,
    }
    return record, int(n)


def train_step(setup: Setup, state: TrainState, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward, (clip), optimizer step; returns the float logits and the loss."""
    place, grad_clip = setup.place, setup.spec.training.grad_clip
    x = x.contiguous(memory_format=torch.channels_last)  # as the model (setup_training)
    with torch.autocast(place.device.type, dtype=place.amp_dtype, enabled=place.amp_dtype is not None):
        logits = setup.net(x).float()  # training mode: logits
        loss = setup.criterion(logits, y)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if grad_clip:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return logits, loss


@torch.inference_mode()
def evaluate(
    setup: Setup, model: torch.nn.Module, split: str, *, detail: bool = False, class_names=None, threshold: float = 0.5
) -> dict[str, Any]:
    """Loss and metrics of ``model`` on one split, in eval mode (restored afterwards)."""
    spec, place = setup.spec, setup.place
    was_training = model.training
    model.eval()
    idx = torch.as_tensor(setup.splits[split])
    step = images_per_batch(setup.images.shape[1:])
    all_logits = []
    for i in range(0, len(idx), step):
        x = setup.images.take(idx[i : i + step], pin=place.cuda).to(place.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(place.device.type, dtype=place.amp_dtype, enabled=place.amp_dtype is not None):
            all_logits.append(model.logits(x).float())
    logits = torch.cat(all_logits)
    y = setup.labels[idx].to(place.device)
    loss = setup.criterion(logits, y).item()
    probs = (torch.sigmoid(logits) if spec.task == "binary" else torch.softmax(logits, 1)).cpu().numpy()
    y_np = y.cpu().numpy()
    names = list(dict.fromkeys(["accuracy", *spec.training.metrics]))
    scores = metrics.compute(names, y_np, probs, spec.task, threshold=threshold)
    out = {"loss": loss, "metrics": scores, "probs": probs, "labels": y_np}
    if detail:
        out["per_class"] = metrics.per_class(class_names, y_np, probs, spec.task, threshold=threshold)
        out["metrics"]["ece"] = metrics.expected_calibration_error(y_np, probs, spec.task)
    model.train(was_training)
    return out


def validate(setup: Setup, state: TrainState) -> dict:
    """The validation split's loss and metrics as ``val_*`` keys (empty without a validation split)."""
    if not len(setup.splits["val"]):
        return {}
    val = evaluate(setup, state.model, "val")
    if state.plateau is not None:
        state.plateau.update(val["loss"])
    return {"val_loss": val["loss"], **{f"val_{k}": v for k, v in val["metrics"].items()}}
