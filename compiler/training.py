"""The training loop: spec -> trained run folder. Reads top to bottom, as nanoGPT's train.py.

Phases, in order: resolve the spec and the run folder; load the data (decoded once, into a
uint8 cache); build model, augmenter and optimizer; restore a checkpoint when resuming;
then per epoch: train steps (augment on the device, autocast, clip, step, lr_at(step)),
evaluate on the validation split, write metrics and checkpoints, maybe stop early; finally
test with the best weights, write plots and the report, and export ONNX.
"""

from __future__ import annotations

import difflib
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from convspec.runtime.files import atomic_write_text
from convspec.specs import ConvspecError, Spec, load_spec, load_spec_text

from . import checkpoint, distributed, metrics, report
from .augment import augmented_batches, build_augmenter
from .builder import build_model
from .data import Dataset, load_dataset
from .device import Placement, resolve
from .runfolder import Run, new_run
from .schedule import Plateau, lr_at
from .split import save_split

EVAL_BATCH = 1024


class TrainingInterrupted(ConvspecError):
    """Ctrl-C during training: last.pt holds the last finished epoch."""

    exit_code = 130  # Why: the shell's convention for SIGINT


def train(
    spec: Spec | str | os.PathLike | None = None,
    out: str | os.PathLike = "runs",
    *,
    overrides: list[str] | None = None,
    resume: str | os.PathLike | None = None,
    device: str | None = None,
    export: bool = True,
    test: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> Run:
    """Train a spec and write its run folder.

    Args:
        spec: a Spec, or the path of a spec file. May be None when resuming.
        out: parent folder of run folders (``runs/NAME``, numbered when taken).
        overrides: ``KEY=VALUE`` strings applied to a spec file (``--set``).
        resume: a run folder; training continues from its ``last.pt``.
        device: overrides ``training.device`` (``cpu``, ``cuda``, ``cuda:1``).
        export: write ``model.onnx`` (parity-checked) at the end.
        test: evaluate the test split at the end (tuning trials pass False: the test split
            must never guide, or even be seen by, a search).
        progress: show a Rich progress bar.
        log: where messages go (default: stderr through Rich).
        on_epoch: called with each epoch's metrics record (tuning reports and prunes here).

    Returns:
        The Run (folder paths). Test metrics are in ``run.read_results()``.

    Raises:
        ConvspecError: bad spec, bad data, unusable checkpoint, or Ctrl-C (TrainingInterrupted).
    """
    dd = distributed.from_env()
    log = (log or _stderr_log()) if dd.is_main else (lambda _m: None)  # under torchrun, rank 0 speaks

    # -- spec, checkpoint and run folder -------------------------------------------------
    state = None
    if resume is not None:
        run = Run(Path(resume))
        if run.path.is_dir() and not run.last.exists():
            raise checkpoint.CheckpointError(
                f"{run}: no last.pt: the run stopped before its first checkpoint; start it again with convspec train "
                "SPEC"
            )
        state = checkpoint.load(run.last)
        for leftover in run.path.glob(".*.tmp"):  # temp files of writes a kill interrupted
            leftover.unlink(missing_ok=True)
        saved = load_spec_text(state["spec"], str(run.spec))
        spec = _check_resume_spec(saved, spec, overrides, run) if spec is not None else saved
    elif not isinstance(spec, Spec):
        if spec is None:
            raise ConvspecError("train needs a spec file, or --resume RUN")
        spec = load_spec(spec, overrides=overrides)
    if device is not None:
        spec.training.device = device
    place = resolve(spec.training.device, spec.training.precision)
    if dd.enabled:
        place = Placement(
            torch.device(f"cuda:{dd.local_rank}") if place.cuda else place.device, place.amp_dtype, place.grad_scaler
        )
        if place.cuda:
            torch.cuda.set_device(place.device)
    distributed.init(dd, place.device)
    t_start = time.perf_counter()

    # -- data (before the run folder: bad data must leave nothing behind) ----------------------
    split_file = str(run.split) if resume is not None and run.split.exists() else None
    data = load_dataset(spec, split_file=split_file, log=log)
    if resume is None:
        run = Run(Path(distributed.broadcast(dd, str(new_run(out, spec.name).path) if dd.is_main else None)))
    if dd.is_main:
        if split_file is None:
            save_split(data, run.split)
        if not run.spec.exists():
            atomic_write_text(run.spec, spec.to_yaml())
    t_data = time.perf_counter() - t_start
    images = _Images(data.images)  # (N, C, H, W) uint8, in RAM or a disk memmap
    labels = torch.from_numpy(data.labels)
    train_idx = torch.from_numpy(data.splits["train"])
    if place.cuda:
        images.pin()

    # -- model, augmenter, optimizer ------------------------------------------------------
    seed = spec.training.seed
    torch.manual_seed(seed)
    model = build_model(spec, num_classes=len(data.class_names), class_names=data.class_names)
    if state is None and model.needs_normalization:
        model.set_normalization(*_auto_stats(model, images, train_idx))
    model.to(place.device)
    if place.cuda:
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    augment = build_augmenter(spec)
    if augment is not None:
        augment.to(place.device)
    optimizer = _optimizer(spec, model)
    scaler = torch.amp.GradScaler("cuda", enabled=place.grad_scaler)
    criterion = _criterion(spec, data, place.device)
    net = model
    if dd.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[place.device.index] if place.cuda else None)
    if spec.training.compile:
        net = torch.compile(net)

    shuffle_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=place.device).manual_seed(seed + 1 + dd.rank)
    sched = spec.training.scheduler
    plateau = Plateau(sched.factor, sched.patience) if sched.type == "plateau" else None
    es = spec.training.early_stopping
    monitor = es.monitor if es else "val_loss"
    minimize = (es.mode == "min") if es and es.mode != "auto" else monitor.endswith("loss")
    history: list[dict] = []
    best = {"value": math.inf if minimize else -math.inf, "epoch": 0}
    start_epoch, stale = 0, 0

    # -- resume ---------------------------------------------------------------------------
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"]) if state.get("scaler") else None
        torch.set_rng_state(state["rng"]["torch"])
        shuffle_gen.set_state(state["rng"]["shuffle"])
        aug_gen.set_state(state["rng"]["augment"])
        if place.cuda and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], place.device)
        history, best, stale = state["history"], state["best"], state["stale"]
        start_epoch = state["epoch"]
        if plateau is not None and state.get("plateau"):
            plateau = Plateau(sched.factor, sched.patience, **state["plateau"])
        log(f"resuming {run} after epoch {start_epoch}")

    def save_checkpoint(path: Path, epoch: int) -> None:
        if not dd.is_main:
            return
        checkpoint.save(
            path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "spec": spec.to_yaml(),
                "epoch": epoch,
                "class_names": data.class_names,
                "history": history,
                "best": best,
                "stale": stale,
                "plateau": plateau.state() if plateau else None,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "shuffle": shuffle_gen.get_state(),
                    "augment": aug_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(place.device) if place.cuda else None,
                },
            },
        )

    if state is None:
        save_checkpoint(run.last, 0)  # Why: Ctrl-C in epoch 1 still leaves a resumable run

    # -- epochs ---------------------------------------------------------------------------
    epochs = spec.training.epochs
    batch = max(1, -(-spec.training.batch_size // dd.world))  # batch_size is global under DDP
    steps_per_epoch = -(-len(distributed.shard(train_idx, dd)) // batch)
    total_steps = epochs * steps_per_epoch
    base_lr = spec.training.optimizer.lr
    bar = _Progress(progress and dd.is_main, epochs, steps_per_epoch)
    t_train = time.perf_counter()
    seen = 0
    stopped_early = False
    try:
        with bar:
            for epoch in range(start_epoch + 1, epochs + 1):
                net.train()
                perm = distributed.shard(train_idx[torch.randperm(len(train_idx), generator=shuffle_gen)], dd)
                loss_sum, correct, count = 0.0, 0.0, 0.0
                t_epoch = time.perf_counter()
                bar.start_epoch(epoch)
                batches = augmented_batches(images, labels, perm, batch, place.device, augment, aug_gen)
                for i, (idx, x, y) in enumerate(batches):  # x: (B, C, H, W) float in [0, 255], augmented
                    step = (epoch - 1) * steps_per_epoch + i
                    lr = lr_at(
                        step, base_lr=base_lr, total_steps=total_steps, steps_per_epoch=steps_per_epoch, scheduler=sched
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = lr * (plateau.scale if plateau else 1.0)
                    if place.cuda:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(place.device.type, dtype=place.amp_dtype, enabled=place.amp_dtype is not None):
                        logits = net(x)  # training mode: logits
                        loss = criterion(logits.float(), y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if spec.training.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.training.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    with torch.no_grad():
                        n = len(idx)
                        loss_sum += loss.item() * n
                        correct += (_predict(logits.float(), spec.task) == y).sum().item()
                        count += n
                    bar.step(loss_sum / count, correct / count, count / (time.perf_counter() - t_epoch))
                loss_sum, correct, count = distributed.all_sum(dd, [loss_sum, correct, count], place.device)
                # Why: each rank's last step updated its own batch-norm running stats; rank 0's are
                # the model's (DDP broadcasts them, checkpoints save them). Without this, ranks see
                # different val metrics, and plateau / best / early stopping disagree between ranks.
                distributed.sync_buffers(dd, model)
                seen += count
                record = {
                    "epoch": epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": loss_sum / count,
                    "train_accuracy": correct / count,
                    "time_s": time.perf_counter() - t_epoch,
                    "images_per_s": count / (time.perf_counter() - t_epoch),
                }
                if len(data.splits["val"]):
                    val = evaluate(model, images, labels, data.splits["val"], spec, place, criterion)
                    record.update({"val_loss": val["loss"], **{f"val_{k}": v for k, v in val["metrics"].items()}})
                    if plateau:
                        plateau.update(val["loss"])
                history.append(record)
                value = record.get(monitor, record["train_loss"] if minimize else record["train_accuracy"])
                improved = (
                    value < best["value"] - (es.min_delta if es else 0)
                    if minimize
                    else value > best["value"] + (es.min_delta if es else 0)
                )
                if improved:
                    best, stale = {"value": value, "epoch": epoch}, 0
                    save_checkpoint(run.best, epoch)
                else:
                    stale += 1
                save_checkpoint(run.last, epoch)
                if dd.is_main:
                    atomic_write_text(run.metrics, "".join(_json_line(h) for h in history))  # small; rewritten whole
                bar.end_epoch(record)
                if on_epoch is not None:
                    on_epoch(record)
                if es and distributed.broadcast(dd, stale >= es.patience):
                    stopped_early = True
                    log(
                        f"early stopping: {monitor} has not improved for {es.patience} epochs (best "
                        f"{best['value']:.4f} at epoch {best['epoch']})"
                    )
                    break
    except KeyboardInterrupt:
        done = history[-1]["epoch"] if history else start_epoch
        raise TrainingInterrupted(
            f"interrupted; {run.last} holds epoch {done}. Continue with: convspec train --resume {run}"
        ) from None
    train_s = time.perf_counter() - t_train

    # -- test with the best weights, report, export ----------------------------------------
    if run.best.exists():
        model.load_state_dict(checkpoint.load(run.best)["model"])
    results = {
        "name": spec.name,
        "task": spec.task,
        "classes": data.class_names,
        "counts": data.counts(),
        "bad_files": data.bad_files,
        "epochs": epochs,
        "epochs_run": history[-1]["epoch"] if history else 0,
        "stopped_early": stopped_early,
        "best_epoch": best["epoch"],
        "monitor": monitor,
        "device": str(place.device),
        "precision": place.precision,
        "world_size": dd.world,
        "timings": {"data_s": t_data, "train_s": train_s, "images_per_s": seen / max(train_s, 1e-9)},
    }
    if test and dd.is_main and len(data.splits["test"]):  # only rank 0 writes results
        tested = evaluate(
            model,
            images,
            labels,
            data.splits["test"],
            spec,
            place,
            criterion,
            detail=True,
            class_names=data.class_names,
        )
        results["test"] = {"loss": tested["loss"], "metrics": tested["metrics"], "per_class": tested["per_class"]}
    if dd.is_main:
        run.write_json(run.results, results)
        if history:
            report.plot_curves(history, run.curves)
        if "test" in results:
            report.plot_confusion(
                results["test"]["per_class"]["confusion"], data.class_names, run.confusion, f"{spec.name}: test split"
            )
        report.write_report(run.report, results)
        if export:
            from .export import export_onnx

            export_onnx(run, log=log)
        acc = results.get("test", {}).get("metrics", {}).get("accuracy")
        log(
            f"done in {time.perf_counter() - t_start:.1f} s: {run}"
            + (f" (test accuracy {acc * 100:.2f} %)" if acc is not None else "")
        )
    distributed.shutdown(dd)
    return run


# ----------------------------------------------------------------------------- helpers


@torch.inference_mode()
def evaluate(
    model, images, labels, idx, spec: Spec, place: Placement, criterion, *, detail=False, class_names=None
) -> dict:
    """Loss and metrics of ``model`` on the images at ``idx``, in eval mode."""
    was_training = model.training
    model.eval()
    idx = torch.as_tensor(idx)
    all_logits = []
    for i in range(0, len(idx), EVAL_BATCH):
        x = images[idx[i : i + EVAL_BATCH]].to(place.device, non_blocking=True)
        if place.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(place.device.type, dtype=place.amp_dtype, enabled=place.amp_dtype is not None):
            all_logits.append(model.logits(x).float())
    logits = torch.cat(all_logits)
    y = labels[idx].to(place.device)
    loss = criterion(logits, y).item()
    probs = (torch.sigmoid(logits) if spec.task == "binary" else torch.softmax(logits, 1)).cpu().numpy()
    y_np = y.cpu().numpy()
    names = list(dict.fromkeys(["accuracy", *spec.training.metrics]))
    out = {"loss": loss, "metrics": metrics.compute(names, y_np, probs, spec.task), "probs": probs}
    if detail:
        out["per_class"] = metrics.per_class(class_names, y_np, probs, spec.task)
        out["metrics"]["ece"] = metrics.expected_calibration_error(y_np, probs, spec.task)
    model.train(was_training)
    return out


def _predict(logits: torch.Tensor, task: str) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if task == "binary" else logits.argmax(1)


def _criterion(spec: Spec, data: Dataset, device: torch.device):
    """Cross-entropy (multiclass) or BCE-with-logits (binary), with smoothing and class weights."""
    loss_spec = spec.training.loss
    k = len(data.class_names)
    weights = None
    if loss_spec.class_weights == "balanced":
        counts = np.bincount(data.labels[data.splits["train"]], minlength=k).astype(np.float64)
        weights = torch.tensor(counts.sum() / (k * np.maximum(counts, 1)), dtype=torch.float32, device=device)
    elif isinstance(loss_spec.class_weights, list):
        weights = torch.tensor(loss_spec.class_weights, dtype=torch.float32, device=device)
    smoothing = loss_spec.label_smoothing
    if spec.task == "multiclass":
        return lambda logits, y: F.cross_entropy(logits, y, weight=weights, label_smoothing=smoothing)

    def binary(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = y.float() * (1 - smoothing) + 0.5 * smoothing
        per = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        if weights is None:
            return per.mean()
        w = weights[y]
        return (per * w).sum() / w.sum()

    return binary


def _optimizer(spec: Spec, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = spec.training.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if o.type == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0, weight_decay=o.weight_decay
        )
    if o.type == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


@torch.no_grad()
def _auto_stats(model, images, idx: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training split, as the ``mean: auto`` step sees it."""
    total = total_sq = None
    n = 0
    for i in range(0, len(idx), EVAL_BATCH):
        x = model.preprocess.before_auto_normalize(images[idx[i : i + EVAL_BATCH]]).double()  # (B, C, H, W)
        s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)  # a constant channel: nothing to scale
    return mean.tolist(), std.tolist()


# Keys a resumed run may change: more epochs, another device.
_RESUMABLE = ("epochs:", "device:")


def _check_resume_spec(saved: Spec, given, overrides, run: Run) -> Spec:
    """The run's own spec, unless the given one differs beyond epochs/device: then refuse with a diff."""
    new = given if isinstance(given, Spec) else load_spec(given, overrides=overrides)
    a, b = saved.to_yaml().splitlines(), new.to_yaml().splitlines()
    diff = [
        d
        for d in difflib.unified_diff(a, b, "run", "given", lineterm="", n=0)
        if d[:1] in "+-" and d[:3] not in ("+++", "---")
    ]
    if any(not d[1:].strip().startswith(_RESUMABLE) for d in diff):
        raise checkpoint.CheckpointError(
            f"{run}: cannot resume: the spec differs from the run's (only epochs and device may change):\n"
            + "\n".join(diff)
        )
    return new


def _json_line(record: dict) -> str:
    import json

    return json.dumps(record) + "\n"


def _stderr_log() -> Callable[[str], None]:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    return lambda msg: console.print(msg, markup=False)


class _Images:
    """Batches of the uint8 cache: a pinned tensor in RAM, or rows of a disk memmap."""

    def __init__(self, array: np.ndarray):
        self.memmap = isinstance(array, np.memmap)
        self.array = array
        self.shape = array.shape  # (N, C, H, W)
        if self.memmap:
            self.tensor = None
        else:
            with warnings.catch_warnings():  # Why: the cache is read-only by design; nothing writes to it
                warnings.simplefilter("ignore", UserWarning)
                self.tensor = torch.from_numpy(np.ascontiguousarray(array))

    def pin(self) -> None:
        if self.tensor is not None:
            self.tensor = self.tensor.pin_memory()

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[idx]
        return torch.from_numpy(np.asarray(self.array[idx.numpy()]))


class _Progress:
    """A Rich progress bar over epochs and steps, showing loss, accuracy and images/s."""

    def __init__(self, enabled: bool, epochs: int, steps: int):
        self.enabled, self.epochs, self.steps = enabled, epochs, steps
        self.progress = None
        self.task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}"),
                transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def start_epoch(self, epoch: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task("train", total=self.steps, epoch=f"{epoch}/{self.epochs}", stats="")

    def step(self, loss: float, acc: float, ips: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, stats=f"loss {loss:.4f} acc {acc:.4f} {ips:,.0f} img/s")

    def end_epoch(self, record: dict) -> None:
        if self.progress is not None:
            val = (
                f" val_loss {record['val_loss']:.4f} val_acc {record['val_accuracy']:.4f}"
                if "val_loss" in record
                else ""
            )
            self.progress.update(
                self.task,
                stats=(
                    f"loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}{val} "
                    f"{record['images_per_s']:,.0f} img/s"
                ),
            )
