"""What convspec's compiler and data pipeline cost over plain PyTorch, as ratios from one run.

1. Step time (forward + backward + AdamW step, batch 64, fp32): the model compiled from
   examples/digits.yaml against the same architecture written by hand as an nn.Sequential.
   Goal: compiled / hand-written <= 1.05.
2. Epoch time: the full training pipeline (uint8 cache -> batch -> augment -> model -> step,
   as ``convspec.compiler.training`` runs it) against compute alone on pre-made float tensors
   (the same model, optimizer and step count, no data work). Goal: pipeline / compute <= 1.10.

Both are measured in interleaved rounds in this one process; the medians are compared.

    python bench/train_overhead.py [--spec examples/digits.yaml] [--rounds 7] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convspec.compiler.augment import augmented_batches, build_augmenter
from convspec.compiler.builder import build_model
from convspec.compiler.data import load_dataset
from convspec.specs import load_spec

REPO = Path(__file__).resolve().parents[1]


def hand_written(num_classes: int, h: int, w: int) -> nn.Module:
    """examples/digits.yaml by hand: what a user would write without convspec."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*block(1, 32), nn.MaxPool2d(2), *block(32, 32),
                                      nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * (h // 2) * (w // 2), num_classes))

        def forward(self, x):
            return self.body((x.float() / 255 - 0.5) / 0.5)

    return Net()


def step_fn(model: nn.Module, opt: torch.optim.Optimizer):
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_steps(step, batches, repeat: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        for x, y in batches:
            step(x, y)
    return (time.perf_counter() - t) / (repeat * len(batches))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(REPO / "examples" / "digits.yaml"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    data = load_dataset(spec, log=lambda _m: None)
    k = len(data.class_names)
    torch.manual_seed(0)
    images = torch.from_numpy(data.images.copy())  # (N, C, H, W) uint8
    labels = torch.from_numpy(data.labels)
    train_idx = torch.from_numpy(data.splits["train"])
    bs = spec.training.batch_size

    # -- 1. step time: compiled vs hand-written ----------------------------------------
    compiled = build_model(spec, num_classes=k).train()
    manual = hand_written(k, *spec.input.size).train()
    assert sum(p.numel() for p in compiled.parameters()) == sum(p.numel() for p in manual.parameters())
    steps = {"compiled": step_fn(compiled, torch.optim.AdamW(compiled.parameters(), 1e-3)),
             "hand-written": step_fn(manual, torch.optim.AdamW(manual.parameters(), 1e-3))}
    batches = [(images[train_idx[i:i + bs]].float(), labels[train_idx[i:i + bs]]) for i in range(0, 20 * bs, bs)]
    for s in steps.values():
        time_steps(s, batches[:3])  # warm-up
    step_times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, s in steps.items():
            step_times[name].append(time_steps(s, batches))

    # -- 2. epoch time: full pipeline vs compute only ----------------------------------------
    model = build_model(spec, num_classes=k).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    step = step_fn(model, opt)
    augment = build_augmenter(spec)
    gen = torch.Generator().manual_seed(0)
    premade = [(images[train_idx[i:i + bs]].float(), labels[train_idx[i:i + bs]]) for i in range(0, len(train_idx), bs)]

    def pipeline_epoch() -> float:
        t = time.perf_counter()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for _idx, x, y in augmented_batches(images, labels, perm, bs, torch.device("cpu"), augment, gen):  # as the loop
            step(x, y)
        return time.perf_counter() - t

    def compute_epoch() -> float:
        t = time.perf_counter()
        for x, y in premade:
            step(x, y)
        return time.perf_counter() - t

    compute_epoch()
    pipeline_epoch()
    epoch_times = {"pipeline": [], "compute only": []}
    for _ in range(args.rounds):
        epoch_times["pipeline"].append(pipeline_epoch())
        epoch_times["compute only"].append(compute_epoch())

    med = {n: statistics.median(v) for n, v in {**step_times, **epoch_times}.items()}
    print(f"spec {args.spec}: batch {bs}, {len(train_idx)} training images, torch threads {torch.get_num_threads()}, {args.rounds} rounds")
    print(f"{'':24}{'median':>12}")
    for name in steps:
        print(f"{'step ' + name:24}{med[name] * 1e3:>10.2f} ms")
    for name in epoch_times:
        print(f"{'epoch ' + name:24}{med[name]:>10.3f} s")
    r1 = med["compiled"] / med["hand-written"]
    r2 = med["pipeline"] / med["compute only"]
    print(f"compiled / hand-written step time: {r1:.3f}  (goal <= 1.05: {'ok' if r1 <= 1.05 else 'MISSED'})")
    print(f"pipeline / compute-only epoch time: {r2:.3f}  (goal <= 1.10: {'ok' if r2 <= 1.10 else 'MISSED'})")


if __name__ == "__main__":
    main()
