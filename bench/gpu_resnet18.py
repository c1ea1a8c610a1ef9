"""ResNet-18 (examples/resnet18.yaml) at 3x224x224 on synthetic uint8 images: convspec's loop against
a hand-written channels_last + bf16 loop of the same net, images/s, the ratio and peak GPU memory.

convspec's side is ``train_epoch`` (the function ``convspec train`` runs each epoch) over a
``setup_training`` of the spec, with and without the spec's augmentation (flip + scale); the
hand-written side is what a user writes: pinned uint8 batches copied non-blocking, channels_last,
``torch.autocast(bfloat16)``, AdamW. The last of ``--epochs`` epochs is timed (the first warms
cuDNN's autotuner). Meant for a CUDA machine (bench/gpu_check.sh runs it); ``--device cpu`` with
tiny sizes only checks that the script runs.

    python bench/gpu_resnet18.py [--images 4096] [--batch 128] [--epochs 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from convspec.compiler.data.dataset import Dataset
from convspec.compiler.training.device import placement_for
from convspec.compiler.training.distributed import Dist
from convspec.compiler.training.epoch import train_epoch
from convspec.compiler.training.setup import setup_training
from convspec.specs import load_spec

REPO = Path(__file__).resolve().parents[1]


def synthetic(n: int, size: int, classes: int) -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.int64)
    empty = np.empty(0, np.int64)
    splits = {"train": np.arange(n, dtype=np.int64), "val": empty, "test": empty}
    return Dataset([str(i) for i in range(classes)], images, labels, [f"synthetic:{i}" for i in range(n)], splits)


def peak_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev: torch.device) -> float:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")


def hand_written(model, images: torch.Tensor, labels: torch.Tensor, batch: int, epochs: int, dev) -> float:
    """A user's loop: images/s of the last epoch."""
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cuda = dev.type == "cuda"
    host = images.pin_memory() if cuda else images
    rate = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(host))
        if cuda:
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        for i in range(0, len(perm), batch):
            b = perm[i : i + batch]
            x = host[b].to(dev, non_blocking=True).float().contiguous(memory_format=torch.channels_last)
            y = labels[b].to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model.logits(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if cuda:
            torch.cuda.synchronize(dev)
        rate = len(perm) / (time.perf_counter() - t)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    spec = load_spec(
        REPO / "examples" / "resnet18.yaml",
        overrides=[f"training.batch_size={args.batch}", "training.epochs=1", f"input.size=[{args.size}, {args.size}]"],
    )
    data = synthetic(args.images, args.size, int(spec.classes))
    place = placement_for(args.device, "auto" if args.device == "cuda" else "fp32")
    dev = place.device
    print(f"ResNet-18, {args.images} synthetic uint8 images 3x{args.size}x{args.size}, batch {args.batch}, {dev}")
    print(f"convspec precision: {place.amp_dtype}, channels_last: {place.cuda}")
    setup, state = setup_training(spec, data, place, Dist())
    hand_model = copy.deepcopy(state.model)
    rates = {}
    for name, s in (
        ("convspec loop, no augmentation", replace(setup, augment=None)),
        ("convspec loop, flip + scale", setup),
    ):
        peak_reset(dev)
        for epoch in range(1, args.epochs + 1):
            record, _ = train_epoch(s, state, epoch)
        rates[name] = record["images_per_s"]
        print(f"  {name}: {rates[name]:,.0f} img/s, peak GPU memory {peak_gib(dev):.2f} GiB")
    peak_reset(dev)
    hand = hand_written(hand_model, setup.images.tensor, setup.labels, setup.batch, args.epochs, dev)
    print(f"  hand-written channels_last + bf16: {hand:,.0f} img/s, peak GPU memory {peak_gib(dev):.2f} GiB")
    ratio = rates["convspec loop, no augmentation"] / hand
    print(f"  ratio convspec / hand-written (no augmentation): {ratio:.3f} (goal >= 0.95)")
    aug = rates["convspec loop, no augmentation"] / rates["convspec loop, flip + scale"]
    print(f"  augmented / compute-only epoch time: {aug:.3f}")


if __name__ == "__main__":
    main()
