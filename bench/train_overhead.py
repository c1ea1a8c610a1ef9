"""What convspec's compiler and data pipeline cost over plain PyTorch, as ratios from one run.

1. Step time (forward + backward + AdamW step, batch 64, fp32): the model compiled from
   examples/digits.yaml against the same architecture written by hand as an nn.Sequential.
   Goal: compiled / hand-written <= 1.05.
2. Epoch time: ``train_epoch`` itself, the function ``convspec train`` runs each epoch (uint8
   cache -> shuffle -> batch -> augment -> lr -> step), against the loop's own ``train_step`` on
   pre-made float tensors (the same model, optimizer and step count, no data work).
   Goal: pipeline / compute <= 1.10. tests/compiler/training/test_bench_in_sync.py fails if this
   bench stops calling the loop's functions.

Both are measured in back-to-back pairs in this one process, the order alternating; the
median of the per-pair ratios is compared with the goal.

    python bench/train_overhead.py [--spec examples/digits.yaml] [--rounds 15] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convspec.compiler.data.loading import load_dataset
from convspec.compiler.model.builder import build_model
from convspec.compiler.training.device import placement_for
from convspec.compiler.training.distributed import from_env
from convspec.compiler.training.epoch import train_epoch, train_step
from convspec.compiler.training.setup import setup_training
from convspec.specs import load_spec

REPO = Path(__file__).resolve().parents[1]


def hand_written(num_classes: int, h: int, w: int) -> nn.Module:
    """examples/digits.yaml by hand: what a user would write without convspec."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                *block(1, 32),
                nn.MaxPool2d(2),
                *block(32, 32),
                nn.Flatten(),
                nn.Dropout(0.2),
                nn.Linear(32 * (h // 2) * (w // 2), num_classes),
            )

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


def paired(a, b, rounds: int) -> tuple[list[float], list[float]]:
    """Times of ``a()`` and ``b()`` measured back to back, ``rounds`` times, the order alternating.

    Why pairs: this machine's speed drifts by tens of percent over seconds (other tenants); the
    ratio of two adjacent measurements cancels the drift, a ratio of separate medians does not.
    """
    ta, tb = [], []
    for r in range(rounds):
        if r % 2:
            tb.append(b())
            ta.append(a())
        else:
            ta.append(a())
            tb.append(b())
    return ta, tb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(REPO / "examples" / "digits.yaml"))
    ap.add_argument("--rounds", type=int, default=15)
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
    steps = {
        "compiled": step_fn(compiled, torch.optim.AdamW(compiled.parameters(), 1e-3)),
        "hand-written": step_fn(manual, torch.optim.AdamW(manual.parameters(), 1e-3)),
    }
    batches = [(images[train_idx[i : i + bs]].float(), labels[train_idx[i : i + bs]]) for i in range(0, 20 * bs, bs)]
    for s in steps.values():
        time_steps(s, batches[:3])  # warm-up
    step_times = paired(
        lambda: time_steps(steps["compiled"], batches), lambda: time_steps(steps["hand-written"], batches), args.rounds
    )

    # -- 2. epoch time: the loop's own train_epoch vs compute only ---------------------------
    place = placement_for("cpu", "fp32")
    setup, state = setup_training(spec, data, place, from_env())
    premade = [
        (images[train_idx[i : i + bs]].float(), labels[train_idx[i : i + bs]]) for i in range(0, len(train_idx), bs)
    ]
    epoch = iter(range(1, 1 << 30))

    def pipeline_epoch() -> float:
        t = time.perf_counter()
        train_epoch(setup, state, min(next(epoch), spec.training.epochs))  # what convspec train runs
        return time.perf_counter() - t

    def compute_epoch() -> float:
        t = time.perf_counter()
        for x, y in premade:
            train_step(setup, state, x, y)  # the loop's own step, on ready float batches
        return time.perf_counter() - t

    compute_epoch()
    pipeline_epoch()
    epoch_times = paired(pipeline_epoch, compute_epoch, args.rounds)

    print(
        f"spec {args.spec}: batch {bs}, {len(train_idx)} training images, torch threads {torch.get_num_threads()}, "
        f"{args.rounds} paired rounds (order alternating)"
    )
    print(f"{'':26}{'median':>10}{'ratio: median':>16}{'quartiles':>16}")
    for label, (a, b), unit, scale, goal in (
        ("step compiled / hand-written", step_times, "ms", 1e3, 1.05),
        ("epoch pipeline / compute", epoch_times, "s", 1.0, 1.10),
    ):
        ratios = sorted(x / y for x, y in zip(a, b, strict=True))
        q1, med, q3 = statistics.quantiles(ratios, n=4)
        print(
            f"{label:26}{statistics.median(a) * scale:>8.3f} {unit} / {statistics.median(b) * scale:.3f} {unit}"
            f"{med:>10.3f}{q1:>10.3f}-{q3:.3f}   (goal <= {goal}: {'ok' if med <= goal else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
