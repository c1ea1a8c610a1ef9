"""Real sizes: 224x224 RGB JPEG photos, thousands of files, as ratios against baselines from ONE run.

The photos are random crops + resizes of the real photographs scikit-image ships in
``skimage/data`` (never downloaded), or of yours (``--photos DIR``: up to 64 images under it,
each a class), written once as JPEG (quality 90) into ``--work`` (default
/tmp/convspec-real-size) and reused by later runs with the same photos and counts:

- ``photos224-N-SET/<class>/*.jpg``: ``--files`` 224x224 files (default 10,000), the class being
  the source photograph; the training, evaluation, RSS and predict figures use these;
- ``photos256-N-SET/`` and ``photos512-N-SET/``: ``--draft-files`` 256 and 512 px files for the
  decode figures (SET: ``skimage``, or the photos folder's name and a hash of its file list).

Printed, each against its goal (ok / MISSED):

1. decode + resize to 3x224x224, the same thread count: convspec's loader (``decode_into``,
   the one loader of training and serving; it decodes a JPEG at the smallest M/8 scale that
   keeps the target, with libjpeg-turbo's scaled IDCT) against plain Pillow (open, convert,
   bilinear resize), and Pillow with ``Image.draft`` against plain Pillow, from 256 px (goal:
   the loader's scaled decoding >= 1.5x) and from 512 px files. Pillow's draft only decodes at
   1/2, 1/4, 1/8 scale: 224 from 256 px cannot use it (1/2 is 128 px); the loader's 7/8 can.
2. one epoch of ``train_epoch`` (the function ``convspec train`` runs) with the spec's augmentation
   (flip + random_crop) against the same without augmentation (goal <= 1.10), and the loop
   without augmentation against a hand-written loop of the same net (goal <= 1.05);
3. ``evaluate`` (the loop's) throughput against training throughput (goal >= 1);
4. peak RSS of a subprocess that loads the data (``data.cache: memory``, then ``disk``) and trains
   one epoch, against the uint8 cache size (goal <= 1.5x); and net of the libraries' fixed RSS
   (torch, scikit-learn, torch._dynamo: about 0.8 GiB with torch's CUDA build, whatever the data),
   which is what the data costs: the total ratio falls as the data set grows. ``--rss-python``
   repeats it under other interpreters, e.g. a venv with torch's CPU build (0.2 GiB alone);
5. ``convspec predict`` and ``convspec evaluate`` over the folder (subprocesses, start-up
   included) against Pillow decoding alone of the same files (goal for predict >= 0.9x;
   evaluate's ratio is printed without one: its scikit-learn import, about 1 s, is a fixed cost
   that 10,000 files do not hide), and against the same work by hand (Pillow, then ONNX
   Runtime); each in a process of its own, without torch, interleaved. On cores that decoding
   already fills, the model's own time comes on top of decoding's: predict keeps up with Pillow
   alone because its decoder is faster than Pillow's (libjpeg-turbo directly) and each worker
   decodes and scores its own batch, with ORT runs small enough to stay in cache. ``--quick``'s
   1,200 files are too few to hide the commands' start-up (predict 0.4 s, evaluate 1.5 s with
   scikit-learn's import).

    python bench/real_size.py [--files 10000] [--photos DIR] [--work DIR] [--threads 2] [--rss-python PY ...] [--quick]

``--quick``: 1,200 files, 300 draft files, smaller epochs (a few minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIZE = 224
RESULTS: list[tuple[str, float, str, bool]] = []


def goal(name: str, value: float, ok: bool, want: str) -> None:
    RESULTS.append((name, value, want, ok))
    print(f"  {name}: {value:.3f} (goal {want}) {'ok' if ok else 'MISSED'}", flush=True)


# ------------------------------------------------------------------ the photos


PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


def source_photos(folder: Path | None = None, limit: int = 64) -> tuple[list[np.ndarray], str]:
    """RGB photographs of at least 256 px as uint8 (H, W, 3), and a tag naming the set.

    From skimage/data by default; with ``folder`` (``--photos``), from the images under it,
    recursively: at most ``limit`` of them, spread over the sorted list, each shrunk to at most
    1024 px on its long side (memory stays bounded whatever the folder holds).
    """
    mine = folder is not None
    if not mine:
        import skimage

        folder = Path(skimage.__file__).parent / "data"
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if len(files) > limit:
        files = [files[i * len(files) // limit] for i in range(limit)]
    tag = f"{folder.name}-{hashlib.sha1(chr(0).join(map(str, files)).encode()).hexdigest()[:8]}" if mine else "skimage"
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.draft("RGB", (1024, 1024))
                im = im.convert("RGB") if im.mode in ("RGB", "RGBA", "CMYK") else None  # photographs, not scans
        except Exception:
            continue
        if im is None or min(im.size) < 256:
            continue
        im.thumbnail((1024, 1024))
        out.append(np.asarray(im))
    if len(out) < 2:
        raise SystemExit(f"need 2 or more RGB photographs of 256 px or more in {folder}")
    return out, tag


def make_folder(root: Path, n: int, px: int, photos: list[np.ndarray], seed: int) -> Path:
    """``n`` JPEGs of ``px`` x ``px`` under ``root/<class>/``, made once (a marker file says done)."""
    done = root / f".done-{n}"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    for k in range(len(photos)):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = i % len(photos)
        img = photos[k]
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((px, px), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(root / f"c{k}" / f"{i:06d}.jpg", quality=90)
    done.touch()
    return root


def jpegs(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*.jpg"))


# ------------------------------------------------------------------ 1. decode


def pillow_decode(files: list[str], threads: int, draft: bool) -> np.ndarray:
    """Plain Pillow: open, (draft), RGB, bilinear resize to 224x224, into one (N, 3, H, W) array."""
    out = np.empty((len(files), 3, SIZE, SIZE), np.uint8)

    def one(i: int) -> None:
        with Image.open(files[i]) as im:
            if draft:
                im.draft("RGB", (SIZE, SIZE))
            a = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        out[i] = a.transpose(2, 0, 1)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(len(files))))
    return out


def convspec_decode(files: list[str], threads: int) -> None:
    from convspec.runtime.images import decode_into

    out = np.empty((len(files), 3, SIZE, SIZE), np.uint8)
    decode_into(files, out, 3, (SIZE, SIZE), "stretch", workers=threads)


def interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each function per round, the order rotating each round.

    Why: other tenants change this machine's speed by tens of percent within seconds; ratios of
    adjacent measurements (per round, then the median) cancel that drift, separate runs do not.
    """
    names = list(fns)
    out = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[k]()
            out[k].append(time.perf_counter() - t)
    return out


def median_ratio(a: list[float], b: list[float]) -> float:
    return float(np.median([x / y for x, y in zip(a, b, strict=True)]))


def bench_decode(work: Path, photos, tag: str, n_draft: int, threads: int, files224: list[str], rounds: int) -> None:
    print(f"1. decode + resize to 3x224x224 ({threads} threads, {rounds} interleaved rounds)", flush=True)
    sub = files224[: max(n_draft, 200)]
    t = interleaved(
        {"plain": lambda: pillow_decode(sub, threads, False), "ours": lambda: convspec_decode(sub, threads)}, rounds
    )
    print(
        f"  224 px files: plain Pillow {len(sub) / min(t['plain']):.0f} img/s, "
        f"convspec loader {len(sub) / min(t['ours']):.0f} img/s"
    )
    r = median_ratio(t["plain"], t["ours"])
    goal("convspec loader / plain Pillow at 224 from 224 px (speed)", r, r >= 0.9, ">= 0.9")
    for px in (256, 512):
        f = jpegs(make_folder(work / f"photos{px}-{n_draft}-{tag}", n_draft, px, photos, seed=px))
        t = interleaved(
            {
                "plain": lambda f=f: pillow_decode(f, threads, False),
                "draft": lambda f=f: pillow_decode(f, threads, True),
                "ours": lambda f=f: convspec_decode(f, threads),
            },
            rounds,
        )
        rate = {k: len(f) / min(v) for k, v in t.items()}
        print(
            f"  {px} px files: plain {rate['plain']:.0f}, Pillow+draft {rate['draft']:.0f}, "
            f"convspec loader {rate['ours']:.0f} img/s"
        )
        draft, ours = median_ratio(t["plain"], t["draft"]), median_ratio(t["plain"], t["ours"])
        if px == 256:
            goal("convspec loader (7/8 scaled decode) / plain at 224 from 256 px (speed)", ours, ours >= 1.5, ">= 1.5")
            print(f"  Pillow draft / plain at 224 from 256 px: {draft:.2f}x (its 1/2 scale is below 224)")
        else:
            print(f"  Pillow draft / plain at 224 from 512 px: {draft:.2f}x; convspec loader / plain {ours:.2f}x")


# ------------------------------------------------------------------ 2, 3. training


def spec_for(root: Path, cache: str, cache_dir: Path, epochs: int = 1, batch: int = 32):
    from convspec.specs import spec_from_dict

    return spec_from_dict(
        {
            "version": 1,
            "name": "real-size",
            "task": "multiclass",
            "data": {"source": {"type": "folder", "path": str(root)}, "cache": cache},
            "input": {"channels": 3, "size": [SIZE, SIZE]},
            "preprocess": [{"type": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}],
            "augment": [{"type": "flip", "horizontal": True}, {"type": "random_crop", "padding": 16}],
            "model": {
                "layers": [
                    {"type": "conv", "filters": 16, "kernel": 5, "stride": 4, "activation": "relu", "batch_norm": True},
                    {"type": "max_pool", "size": 2},
                    {"type": "conv", "filters": 32, "kernel": 3, "activation": "relu", "batch_norm": True},
                    {"type": "max_pool", "size": 2},
                    {"type": "conv", "filters": 64, "kernel": 3, "activation": "relu", "batch_norm": True},
                    {"type": "global_avg_pool"},
                ]
            },
            "training": {"epochs": epochs, "batch_size": batch, "seed": 0},
        },
        base_dir=str(cache_dir),
    )


def hand_written_epoch(model, opt, images, labels, perm, batch: int) -> float:
    """The same net trained by hand: gather, float, forward, cross-entropy, backward, AdamW."""
    import torch.nn.functional as F

    model.train()
    t = time.perf_counter()
    for i in range(0, len(perm), batch):
        b = perm[i : i + batch]
        x, y = images[b].float(), labels[b]
        loss = F.cross_entropy(model.logits(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def bench_training(root: Path, work: Path, rounds: int) -> float:
    import torch

    from convspec.compiler.data.loading import load_dataset
    from convspec.compiler.training.device import placement_for
    from convspec.compiler.training.distributed import Dist
    from convspec.compiler.training.epoch import evaluate, train_epoch
    from convspec.compiler.training.setup import setup_training

    print("2. one epoch of train_epoch at 3x224x224 (flip + random_crop)", flush=True)
    spec = spec_for(root, "memory", work)
    data = load_dataset(spec, log=lambda _m: None)
    place = placement_for("cpu", "fp32")
    setup, state = setup_training(spec, data, place, Dist())
    plain = replace(setup, augment=None)
    hand = copy.deepcopy(state.model)
    # fused, as make_optimizer builds it: the ratio is then the loop's own cost, not the update kernel's
    hand_opt = torch.optim.AdamW(hand.parameters(), lr=spec.training.optimizer.lr, fused=True)
    train_idx = torch.from_numpy(data.splits["train"])
    images, labels = setup.images.tensor, setup.labels
    n = len(train_idx)
    aug_t, none_t, hand_t = [], [], []
    train_epoch(setup, state, 1)  # warm-up, not timed: first-call allocations of each path
    hand_written_epoch(hand, hand_opt, images, labels, train_idx, setup.batch)
    for r in range(rounds):  # alternating order: the machine's speed drifts (other tenants)
        order = ["aug", "none", "hand"] if r % 2 == 0 else ["hand", "none", "aug"]
        for what in order:
            if what == "aug":
                aug_t.append(train_epoch(setup, state, 1)[0]["time_s"])
            elif what == "none":
                none_t.append(train_epoch(plain, state, 1)[0]["time_s"])
            else:
                perm = train_idx[torch.randperm(n)]
                hand_t.append(hand_written_epoch(hand, hand_opt, images, labels, perm, setup.batch))
    ratio = lambda a, b: float(np.median([x / y for x, y in zip(a, b, strict=True)]))  # noqa: E731
    print(
        f"  {n} images: augmented {n / min(aug_t):.0f} img/s, no augmentation {n / min(none_t):.0f}, "
        f"hand-written {n / min(hand_t):.0f}"
    )
    goal("augmented epoch / compute-only epoch", ratio(aug_t, none_t), ratio(aug_t, none_t) <= 1.10, "<= 1.10")
    goal("loop / hand-written loop (no augmentation)", ratio(none_t, hand_t), ratio(none_t, hand_t) <= 1.05, "<= 1.05")

    print("3. evaluation against training throughput", flush=True)
    evaluate(setup, state.model, "train")  # warm
    t = time.perf_counter()
    evaluate(setup, state.model, "train")
    eval_rate = n / (time.perf_counter() - t)
    train_rate = n / min(none_t)
    print(f"  evaluate {eval_rate:.0f} img/s, train {train_rate:.0f} img/s")
    goal("evaluation / training throughput", eval_rate / train_rate, eval_rate >= train_rate, ">= 1")
    return n / min(none_t)


# ------------------------------------------------------------------ 4. RSS

RSS_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[4])
from real_size import spec_for
from pathlib import Path
import torch
from convspec.compiler.data.loading import load_dataset
from convspec.compiler.training.device import placement_for
from convspec.compiler.training.distributed import Dist
from convspec.compiler.training.epoch import evaluate, train_epoch
from convspec.compiler.training.setup import setup_training
def status(key):  # VmHWM: this process's own peak (ru_maxrss would start at the parent's, across fork)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
bare = status("VmRSS")
# The libraries a run imports anyway, first: their footprint is fixed, whatever the data's size
# (the CUDA build of torch is about 0.5 GiB of it, scikit-learn and torch._dynamo 0.15 each).
import sklearn.metrics, sklearn.model_selection, torch._dynamo  # noqa: E401
base = status("VmRSS")
spec = spec_for(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
data = load_dataset(spec, cache_dir=sys.argv[3], log=lambda _m: None)
setup, state = setup_training(spec, data, placement_for("cpu", "fp32"), Dist())
train_epoch(setup, state, 1)
evaluate(setup, state.model, "val")
peak = status("VmHWM")
print(json.dumps({"torch": torch.__version__, "cuda_build": torch.version.cuda is not None, "bare": bare,
                  "base": base, "peak": peak, "cache": int(data.images.nbytes), "memmap": type(data.images).__name__}))
"""


def bench_rss(root: Path, work: Path, python: str) -> None:
    print("4. peak RSS (a subprocess: load, one epoch, evaluate) against the uint8 cache", flush=True)
    for mode in ("memory", "disk"):
        with tempfile.TemporaryDirectory(prefix=f"rss-{mode}-", dir=work) as cache_dir:  # a 1.5-GB memmap
            out = subprocess.run(
                [python, "-c", RSS_CHILD, str(root), mode, cache_dir, str(Path(__file__).parent)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        gib = lambda b: b / 2**30  # noqa: E731
        ratio, net = r["peak"] / r["cache"], (r["peak"] - r["base"]) / r["cache"]
        print(
            f"  {mode}, torch {r['torch']}: cache {gib(r['cache']):.2f} GiB ({r['memmap']}), "
            f"peak RSS {gib(r['peak']):.2f} GiB, "
            f"of which libraries {gib(r['base']):.2f} GiB (torch alone {gib(r['bare']):.2f}); "
            f"peak RSS net of the libraries / cache {net:.2f}x"
        )
        goal(f"peak RSS / cache ({mode}, torch {r['torch']})", ratio, ratio <= 1.5, "<= 1.5")
        if r.get("cuda_build") and ratio > 1.5:
            print(
                f"  (torch's CUDA build: its libraries hold {gib(r['base']):.2f} GiB whatever the data; on a machine "
                "without a GPU the README installs the CPU build, and --rss-python measures one)"
            )
        goal(f"(peak RSS - libraries) / cache ({mode}, torch {r['torch']})", net, net <= 1.5, "<= 1.5")


# ------------------------------------------------------------------ 5. predict / evaluate


# Each engine in a process of its own (Why: torch's idle threads slow Pillow and ORT beside them).
BY_HAND = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from real_size import jpegs, pillow_decode
from pathlib import Path
files, threads = jpegs(Path(sys.argv[1])), int(sys.argv[4])
p = None
if sys.argv[2] != "-":
    from convspec.runtime import Predictor
    p = Predictor(sys.argv[2])
t = time.perf_counter()
for i in range(0, len(files), 256):
    batch = pillow_decode(files[i : i + 256], threads, False)
    if p is not None:
        p.predict_arrays(batch)
print(time.perf_counter() - t)
"""


def bench_serving(root: Path, work: Path, files: list[str], threads: int, rounds: int) -> None:
    print(f"5. convspec predict / evaluate over the folder against Pillow decoding alone ({rounds} rounds)", flush=True)
    with tempfile.TemporaryDirectory(prefix="runs-", dir=work) as out:
        serve_run(root, work, Path(out), files, threads, rounds)


def serve_run(root: Path, work: Path, out: Path, files: list[str], threads: int, rounds: int) -> None:
    from convspec.compiler.training.loop import train

    run = train(spec_for(root, "memory", work), out=out, progress=False, log=lambda _m: None)
    model = run.path / "model.onnx"
    here = str(Path(__file__).parent)

    def by_hand(onnx: str) -> float:
        cmd = [sys.executable, "-c", BY_HAND, str(root), onnx, here, str(threads)]
        return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[-1])

    def command(cmd: list[str]) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "convspec.compiler", *cmd], capture_output=True, check=True)
        return time.perf_counter() - t

    t = interleaved(
        {
            "pillow": lambda: by_hand("-"),
            "both": lambda: by_hand(str(model)),
            "predict": lambda: command(["predict", str(model), str(root), "--format", "csv"]),
            "evaluate": lambda: command(["evaluate", str(model), str(root)]),
        },
        rounds,
    )
    pillow, both = min(t["pillow"]), min(t["both"])
    print(
        f"  Pillow alone {len(files) / pillow:.0f} img/s; Pillow + ONNX Runtime by hand {len(files) / both:.0f} img/s "
        f"(inference adds {both / pillow - 1:.0%} to decoding's time on these cores)"
    )
    for name in ("predict", "evaluate"):
        r, hand = median_ratio(t["pillow"], t[name]), median_ratio(t["both"], t[name])
        print(
            f"  convspec {name}: {len(files) / min(t[name]):.0f} img/s (start-up included); "
            f"against Pillow + ONNX Runtime by hand {hand:.2f}x"
        )
        if name == "predict":
            goal(f"{name} / Pillow decoding (speed)", r, r >= 0.9, ">= 0.9")
        else:  # Why no goal: the issue sets none, and scikit-learn's import (about 1 s) is a fixed cost
            print(f"  {name} / Pillow decoding (speed): {r:.3f} (scikit-learn's metrics import about 1 s of it)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--draft-files", type=int, default=1000)
    ap.add_argument("--work", default="/tmp/convspec-real-size")
    ap.add_argument(
        "--photos", type=Path, help="make the JPEGs from the photographs under this folder (default: skimage/data)"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=4, help="alternating epoch rounds (the median ratio is reported)")
    ap.add_argument("--decode-rounds", type=int, default=5, help="interleaved decode rounds")
    ap.add_argument(
        "--rss-python",
        nargs="*",
        default=[],
        help="more interpreters (with convspec installed) to measure RSS under, e.g. one with torch's CPU build",
    )
    ap.add_argument("--serve-rounds", type=int, default=2, help="interleaved predict / evaluate rounds")
    ap.add_argument("--quick", action="store_true", help="1,200 files, 300 draft files, 1 round")
    ap.add_argument("--skip", nargs="*", default=[], choices=["decode", "train", "rss", "serve"])
    args = ap.parse_args()
    if args.quick:
        args.files, args.draft_files, args.rounds = min(args.files, 1200), min(args.draft_files, 300), 1
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    photos, tag = source_photos(args.photos)
    root = make_folder(work / f"photos224-{args.files}-{tag}", args.files, SIZE, photos, seed=0)
    files = jpegs(root)
    print(
        f"{len(files)} JPEGs of 224x224 from {len(photos)} photos ({tag}) in {root} "
        f"({args.threads} threads; {time.perf_counter() - t0:.0f} s to make or find)",
        flush=True,
    )
    if "decode" not in args.skip:
        bench_decode(work, photos, tag, args.draft_files, args.threads, files, args.decode_rounds)
    if "train" not in args.skip:
        bench_training(root, work, args.rounds)
    if "rss" not in args.skip:
        for python in [sys.executable, *args.rss_python]:
            bench_rss(root, work, python)
    if "serve" not in args.skip:
        bench_serving(root, work, files, args.threads, args.serve_rounds)
    missed = [name for name, _, _, ok in RESULTS if not ok]
    print(
        f"done in {time.perf_counter() - t0:.0f} s; {len(RESULTS) - len(missed)} ok, {len(missed)} MISSED", flush=True
    )


if __name__ == "__main__":
    main()
