"""Transfer learning: a small target set from scratch against ``training.init`` from a related run.

Data (scikit-learn's 8x8 digits, real scans, written as PNG folders):
- source: every image of the digits 0-5 (about 1,080), split 90/10 into train/val;
- target: the digits 6-9, of which only ``--fraction`` (default 3 %: 5 images per class) train
  and as many validate; every other image of 6-9 is the test set (about 670). Why 3 %, not 10 %:
  at 10 % (18 per class) training from scratch already reaches about 97.5 % on these easy
  images, which leaves no room to measure a gain (measured: +0.0 points).

The source run learns strokes on other classes; the target runs train the same spec (the
layers of examples/digits.yaml at 12x12, a 4-class head instead of 6) for the same epochs,
once from random weights and once with ``training.init: SOURCE_RUN`` (the convs copied, the head
fresh because the class count differs), and once more with init and both convs frozen for the
first half of the epochs (``freeze: [0, 2]``, ``unfreeze_epoch``), for each seed. Printed: each
test accuracy, the medians and the gains in points (goal: >= 3; the exit code judges plain init).

    python bench/transfer.py [--seeds 0 1 2] [--epochs 15] [--fraction 0.03]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SPEC = """
version: 1
name: {name}
task: multiclass
data:
  source: {{type: folder, path: {data}}}
  split: {{from: folders}}
input: {{channels: 1, size: [12, 12]}}
preprocess: [{{type: normalize, mean: [0.5], std: [0.5]}}]
augment: [{{type: rotate, degrees: 8}}, {{type: translate, fraction: [0.08, 0.08]}}]
model:
  layers:
    - {{type: conv, filters: 32, kernel: 3, activation: relu, batch_norm: true}}
    - {{type: max_pool, size: 2}}
    - {{type: conv, filters: 32, kernel: 3, activation: relu, batch_norm: true}}
    - {{type: flatten}}
    - {{type: dropout, rate: 0.2}}
training:
  epochs: {epochs}
  batch_size: 32
  optimizer: {{type: adamw, lr: 0.003, weight_decay: 0.0001}}
  scheduler: {{type: onecycle}}
  seed: {seed}
"""


def write_folders(root: Path, fraction: float) -> tuple[Path, Path]:
    """PNG folders ``source/{train,val}/D`` (digits 0-5) and ``target/{train,val,test}/D`` (6-9)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels, target = np.rint(d.images * 255.0 / 16.0).astype(np.uint8), d.target
    rng = np.random.default_rng(0)
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(target == digit))
        if digit <= 5:
            n_val = len(idx) // 10
            parts = {"source/val": idx[:n_val], "source/train": idx[n_val:]}
        else:
            n = max(2, round(len(idx) * fraction))
            parts = {"target/train": idx[:n], "target/val": idx[n : 2 * n], "target/test": idx[2 * n :]}
        for where, ids in parts.items():
            folder = root / where / str(digit)
            folder.mkdir(parents=True)
            for i in ids:
                Image.fromarray(pixels[i]).save(folder / f"{i:04d}.png")
    return root / "source", root / "target"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--fraction", type=float, default=0.03, help="share of the digits 6-9 that trains")
    ap.add_argument("--goal", type=float, default=3.0, help="gain in points")
    args = ap.parse_args()

    from convspec.compiler import train
    from convspec.specs import load_spec_text

    quiet = {"progress": False, "log": lambda _m: None, "export": False}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source, target = write_folders(tmp / "data", args.fraction)

        def spec(name: str, data: Path, seed: int, init: Path | None = None, freeze: bool = False):
            text = SPEC.format(name=name, data=data, epochs=args.epochs, seed=seed)
            if init is not None:
                text += f"  init: {init}\n"
            if freeze:
                text += f"  freeze: [0, 2]\n  unfreeze_epoch: {args.epochs // 2 + 1}\n"
            return load_spec_text(text, f"{name}.yaml", base_dir=str(tmp))

        t0 = time.perf_counter()
        src_run = train(spec("source", source, 0), out=tmp / "runs", test=False, **quiet)
        val = src_run.history()[-1].get("val_accuracy")
        print(
            f"source run (digits 0-5, {args.epochs} epochs): val accuracy {val:.4f}, {time.perf_counter() - t0:.0f} s"
        )
        acc: dict[str, list[float]] = {"scratch": [], "init": [], "init+freeze": []}
        for seed in args.seeds:
            for kind in acc:
                run = train(
                    spec(
                        f"{kind.replace('+', '-')}-{seed}",
                        target,
                        seed,
                        src_run.path if kind != "scratch" else None,
                        freeze=kind == "init+freeze",
                    ),
                    out=tmp / "runs",
                    **quiet,
                )
                results = run.read_results()
                acc[kind].append(results["test"]["metrics"]["accuracy"])
                if kind == "init" and seed == args.seeds[0]:
                    fresh = [t["name"] for t in results["init"]["fresh"]]
                    print(f"init: {results['init']['copied']} tensors copied, fresh: {', '.join(fresh)}")
            counts = results["counts"]
            print(
                f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in acc.items()) + " "
                f"(train {sum(counts['train'].values())}, test {sum(counts['test'].values())} images)"
            )
    med = {k: statistics.median(v) for k, v in acc.items()}
    gain = (med["init"] - med["scratch"]) * 100
    frozen_gain = (med["init+freeze"] - med["scratch"]) * 100
    print(
        f"median test accuracy over seeds {args.seeds}: scratch {med['scratch'] * 100:.2f} %, "
        f"init from run {med['init'] * 100:.2f} %: gain {gain:+.2f} points (goal >= {args.goal:g}); "
        f"init + freeze {med['init+freeze'] * 100:.2f} %: gain {frozen_gain:+.2f} points"
    )
    return 0 if gain >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
