"""Everything a run builds before its first step: model, augmenter, optimizer, loss, state."""

from __future__ import annotations

import contextlib

import torch

from convspec.specs import Spec

from ..data.augment import build_augmenter
from ..data.cache import CachedImages
from ..data.dataset import Dataset
from ..data.memory import images_per_batch
from ..model.backbone import no_weight_loading
from ..model.builder import assemble_model
from . import distributed
from .device import Placement
from .distributed import Dist
from .epoch import Setup, without_lone_last
from .init import init_from
from .objective import class_weights, make_criterion, make_optimizer
from .progress import Log, silent
from .schedule import Plateau
from .state import TrainState
from .stopping import Monitor
from .transfer import Freeze


def setup_training(
    spec: Spec, data: Dataset, place: Placement, dd: Dist, *, fresh: bool = True, log: Log = silent
) -> tuple[Setup, TrainState]:
    """Build the run's fixed parts and its initial state (seeded; ``fresh``: not resuming, so
    ``training.init`` is read; a resumed run's checkpoint restores everything instead)."""
    # (N, C, H, W) uint8, in RAM or a disk memmap; not pinned whole (a second copy of the cache):
    # each chunk is gathered into pinned memory on its way to the GPU (data.prefetch).
    images = CachedImages(data.images)
    torch.manual_seed(spec.training.seed)
    k = len(data.class_names)
    with contextlib.nullcontext() if fresh else no_weight_loading():  # resuming: last.pt holds every weight
        model = assemble_model(spec, num_classes=k, class_names=data.class_names)
    if fresh and model.needs_normalization:
        model.set_normalization(*auto_normalization(model, images, torch.from_numpy(data.splits["train"])))
    init = init_from(model, spec.training.init, log) if fresh and spec.training.init else None
    freeze = Freeze.from_spec(spec, model)
    if freeze is not None:
        log(freeze.describe())
    # Why channels_last on the CPU too: oneDNN's convolutions train 1.2-1.4x faster in it (digits'
    # net, and a 3x128x128 one, on 1 and 2 threads)
    model.to(place.device).to(memory_format=torch.channels_last)
    if place.cuda:
        torch.backends.cudnn.benchmark = True
    augment = build_augmenter(spec)
    if augment is not None:
        augment.to(place.device)

    def wrap() -> torch.nn.Module:
        net = model
        if dd.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[place.device.index] if place.cuda else None
            )
        return torch.compile(net) if spec.training.compile else net

    net = wrap()
    weights = class_weights(spec, data.labels[data.splits["train"]], k)
    batch = max(1, -(-spec.training.batch_size // dd.world))  # batch_size is global under DDP
    steps = -(-len(without_lone_last(distributed.shard(torch.from_numpy(data.splits["train"]), dd), batch)) // batch)
    setup = Setup(
        spec, place, dd, images, torch.from_numpy(data.labels), data.splits, net,
        make_criterion(spec, weights, place.device), augment, batch, steps, freeze,
    )  # fmt: skip
    if freeze is not None and dd.enabled:
        # Why: DDP records which parameters need gradients when it is built; a freeze change re-wraps.
        freeze.rewrap = lambda: setattr(setup, "net", wrap())
    sched = spec.training.scheduler
    state = TrainState(
        model=model,
        optimizer=make_optimizer(spec, model),
        scaler=torch.amp.GradScaler("cuda", enabled=place.grad_scaler),
        shuffle_gen=torch.Generator().manual_seed(spec.training.seed),
        aug_gen=torch.Generator(device=place.device).manual_seed(spec.training.seed + 1 + dd.rank),
        monitor=Monitor.from_spec(spec.training.early_stopping),
        plateau=Plateau(sched.factor, sched.patience) if sched.type == "plateau" else None,
        init=init,
    )
    return setup, state


@torch.no_grad()
def auto_normalization(model, images: CachedImages, idx: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training split, as the ``mean: auto`` step sees it."""
    total = total_sq = None
    n = 0
    # A quarter of an evaluation batch: float64 pixels and their squares are 4x its float32 bytes.
    step = max(1, images_per_batch(images.shape[1:]) // 4)
    for i in range(0, len(idx), step):
        x = model.preprocess.before_auto_normalize(images[idx[i : i + step]]).double()  # (B, C, H, W)
        s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)  # a constant channel: nothing to scale
    return mean.tolist(), std.tolist()
