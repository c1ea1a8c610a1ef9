"""Time to accuracy: ``convspec train`` on a spec for seeds 0, 1, 2, wall time start-up included.

Each seed is a fresh ``convspec train SPEC --set training.seed=S`` process (import, data,
training, test, plots, report and ONNX export with its parity check), as a user runs it.
The baseline, measured in the same run, is a hand-written PyTorch script training the same
architecture for the same epochs on the same split (``--baseline``; digits specs only).

    python bench/time_to_accuracy.py [examples/digits.yaml] [--seeds 0 1 2] [--goal-acc 0.99] [--goal-s 8]
        [--no-bytecode-cache]

Bytecode: a user's Python caches convspec's compiled modules (``__pycache__``) on its first run
and reads them on every later one, so by default the bench compiles them first (``compileall``,
as that first run would) and runs each process with bytecode caching on, whatever
``PYTHONDONTWRITEBYTECODE`` says (some sandboxes and CI images set it; each run then compiles
every convspec module from source, about 0.4 s here). ``--no-bytecode-cache`` measures that case:
the processes get the environment as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BASELINE = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from convspec.specs import load_spec
from convspec.compiler.data.loading import load_dataset
spec = load_spec(sys.argv[1]); seed = int(sys.argv[2])
d = load_dataset(spec, log=lambda m: None)
X = torch.from_numpy(d.images.copy()).float(); y = torch.from_numpy(d.labels)
tr, te = torch.from_numpy(d.splits["train"]), torch.from_numpy(d.splits["test"])
torch.manual_seed(seed); g = torch.Generator().manual_seed(seed)
blk = lambda i, o: [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
flat = 32 * (spec.input.size[0] // 2) * (spec.input.size[1] // 2)
net = nn.Sequential(*blk(1, 32), nn.MaxPool2d(2), *blk(32, 32), nn.Flatten(), nn.Dropout(0.2),
                    nn.Linear(flat, len(d.class_names)))
assert sum(p.numel() for p in net.parameters()) == spec.summary().params, 'the hand-written net is not the spec'
o = spec.training.optimizer; bs = spec.training.batch_size; E = spec.training.epochs
opt = torch.optim.AdamW(net.parameters(), lr=o.lr, weight_decay=o.weight_decay)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, o.lr, total_steps=E * -(-len(tr) // bs))
for ep in range(E):
    net.train(); perm = tr[torch.randperm(len(tr), generator=g)]
    for i in range(0, len(perm), bs):
        b = perm[i:i + bs]; x = X[b]
        n = len(b); a = (torch.rand(n, generator=g) * 2 - 1) * 8 * np.pi / 180
        t = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.16
        th = torch.zeros(n, 2, 3); th[:, 0, 0] = a.cos(); th[:, 0, 1] = -a.sin()
        th[:, 1, 0] = a.sin(); th[:, 1, 1] = a.cos(); th[:, :, 2] = t
        x = F.grid_sample(x, F.affine_grid(th, x.shape, align_corners=False), align_corners=False)
        loss = F.cross_entropy(net((x / 255 - 0.5) / 0.5), y[b])
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
net.eval()
with torch.no_grad():
    acc = (net((X[te] / 255 - 0.5) / 0.5).argmax(1) == y[te]).float().mean().item()
print(f"{acc} {time.perf_counter() - t0}")
"""


ENV = dict(os.environ)  # the processes' environment (main: bytecode caching on, unless told not to)


def cache_bytecode() -> None:
    """Compile convspec's modules into their ``__pycache__`` folders, as a user's first run does."""
    import compileall
    import importlib.util

    ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in ("convspec.specs", "convspec.compiler", "convspec.runtime"):
        for folder in importlib.util.find_spec(name).submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def run_convspec(spec: str, seed: int, out: str) -> tuple[float, float]:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "convspec.compiler", "train", spec, "--out", out, "--set", f"training.seed={seed}"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"convspec train failed:\n{proc.stderr[-3000:]}")
    run = max(Path(out).iterdir(), key=os.path.getmtime)
    results = json.loads((run / "results.json").read_text())
    return results["test"]["metrics"]["accuracy"], wall


def run_baseline(spec: str, seed: int) -> tuple[float, float]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BASELINE, spec, str(seed)], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"baseline failed:\n{proc.stderr[-3000:]}")
    acc, _ = proc.stdout.split()
    return float(acc), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default=str(REPO / "examples" / "digits.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--goal-acc", type=float, default=0.99)
    ap.add_argument("--goal-s", type=float, default=8.0)
    ap.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the hand-written loop (architecture of examples/digits.yaml)",
    )
    ap.add_argument(
        "--bytecode-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile convspec's modules first and let the processes cache bytecode (as after a user's first run)",
    )
    args = ap.parse_args()
    if args.bytecode_cache:
        cache_bytecode()
        how = "cached, as on a user's second and later runs (--no-bytecode-cache: as the environment says)"
    elif os.environ.get("PYTHONDONTWRITEBYTECODE"):
        how = "as the environment says (PYTHONDONTWRITEBYTECODE set: every run compiles from source)"
    else:
        how = "as the environment says"
    print(f"bytecode: {how}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            acc, wall = run_convspec(args.spec, seed, out)
            base = run_baseline(args.spec, seed) if args.baseline else (float("nan"), float("nan"))
            rows.append((seed, acc, wall, *base))
            print(
                f"seed {seed}: convspec test accuracy {acc * 100:.2f} % in {wall:.1f} s wall"
                + (f"; hand-written loop {base[0] * 100:.2f} % in {base[1]:.1f} s" if args.baseline else ""),
                flush=True,
            )
    acc = statistics.median(r[1] for r in rows)
    wall = statistics.median(r[2] for r in rows)
    print(
        f"median: test accuracy {acc * 100:.2f} % (goal >= {args.goal_acc * 100:.1f} %: "
        f"{'ok' if acc >= args.goal_acc else 'MISSED'}), "
        f"wall {wall:.1f} s (goal <= {args.goal_s:.0f} s: {'ok' if wall <= args.goal_s else 'MISSED'})"
    )
    if args.baseline:
        base_wall = statistics.median(r[4] for r in rows)
        print(
            f"hand-written loop: median {statistics.median(r[3] for r in rows) * 100:.2f} %, {base_wall:.1f} s; "
            f"convspec (with report and ONNX export) / hand-written wall: {wall / base_wall:.2f}"
        )


if __name__ == "__main__":
    main()
