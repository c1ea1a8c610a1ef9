"""Load test of the runtime: one ``convspec.runtime.Predictor`` shared by 4 threads, 10,000 predictions.

Each prediction is one image (a PNG path or a numpy array, alternating), as a web service
would send them. The script reports throughput (and its ratio to one thread, measured in the
same run), p50/p99 latency, errors, and the process RSS after warm-up and at the end.

An error is an exception, or a label that differs from the one a single-threaded pass gave
for the same image (threads must not mix up results). Pass criteria: 0 errors and RSS growth
under 10 % from warm-up to the end (no leak per prediction).

Usage::

    python bench/predict_load.py [--model runs/digits-cnn/model.onnx] [--threads 4] [--total 10000]

Without ``--model`` it trains a 2-epoch digits model first, in a child process (this process
stays torch-free, like a deployment).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Resident set size of this process, from /proc/self/status (VmRSS), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_digits(out: Path) -> Path:
    """A 2-epoch digits model, trained in a child process; returns its model.onnx."""
    cmd = [
        sys.executable,
        "-m",
        "convspec.compiler",
        "train",
        str(REPO / "examples" / "digits.yaml"),
        "--set",
        "training.epochs=2",
        "--out",
        str(out),
    ]
    print(f"training a 2-epoch digits model in {out} ...", flush=True)
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return out / "digits-cnn" / "model.onnx"


def make_inputs(folder: Path, n: int = 200) -> list:
    """``n`` digits: even ones as PNG files, odd ones as uint8 arrays (8x8; the runtime resizes them)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = np.rint(load_digits().images[:n] * 255 / 16).astype(np.uint8)
    items: list = []
    for i, a in enumerate(pixels):
        if i % 2 == 0:
            path = folder / f"{i:04d}.png"
            Image.fromarray(a).save(path)
            items.append(str(path))
        else:
            items.append(a)
    return items


def drive(predictor, items: list, expected: list[str] | None, threads: int, total: int) -> dict:
    """``total`` single-image predictions spread over ``threads`` threads; latencies and errors."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)

    def worker(t: int) -> None:
        mine = range(t, total, threads)
        start.wait()
        for k in mine:
            i = k % len(items)
            t0 = time.perf_counter()
            try:
                [pred] = predictor.predict([items[i]])
                ok = expected is None or pred.label == expected[i]
                problem = None if ok else f"image {i}: label {pred.label}, expected {expected[i]}"
            except Exception as e:  # noqa: BLE001 - counted and reported
                problem = f"image {i}: {type(e).__name__}: {e}"
            latencies[t].append(time.perf_counter() - t0)
            if problem:
                with lock:
                    errors.append(problem)

    pool = [threading.Thread(target=worker, args=(t,), name=f"load-{t}") for t in range(threads)]
    for th in pool:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in pool:
        th.join()
    wall = time.perf_counter() - t0
    lat = np.concatenate([np.asarray(x) for x in latencies]) * 1e3
    return {
        "n": len(lat),
        "wall_s": wall,
        "per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model.onnx or a run folder (default: train one)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--total", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--baseline", type=int, default=1_000, help="single-thread predictions for the ratio")
    ap.add_argument(
        "--intra-op-threads", type=int, default=1, help="ORT threads per run (1: the 4 callers are the parallelism)"
    )
    args = ap.parse_args(argv)

    from convspec.runtime import Predictor

    with tempfile.TemporaryDirectory(prefix="predict-load-") as tmp:
        tmp = Path(tmp)
        model = args.model or train_digits(tmp / "runs")
        if model.is_dir():
            model = model / "model.onnx"
        predictor = Predictor(model, providers="cpu", intra_op_threads=args.intra_op_threads)
        items = make_inputs(tmp)
        expected = [p.label for p in predictor.predict(items)]  # single-threaded reference labels
        print(
            f"model {model} ({predictor.task}, {len(predictor.classes)} classes, input {list(predictor.input_shape)}); "
            f"{len(items)} distinct images, PNG paths and arrays alternating; torch imported: {'torch' in sys.modules}"
        )

        warm = drive(predictor, items, expected, args.threads, args.warmup)
        rss_warm = rss_mb()
        base = drive(predictor, items, expected, 1, args.baseline)
        run = drive(predictor, items, expected, args.threads, args.total)
        rss_end = rss_mb()

    growth = (rss_end - rss_warm) / rss_warm * 100
    errors = warm["errors"] + base["errors"] + run["errors"]
    print(
        f"1 thread   : {base['n']:>6,} predictions, {base['per_s']:8.0f}/s, p50 {base['p50_ms']:.2f} ms, p99 "
        f"{base['p99_ms']:.2f} ms"
    )
    print(
        f"{args.threads} threads  : {run['n']:>6,} predictions in {run['wall_s']:.1f} s, {run['per_s']:8.0f}/s "
        f"({run['per_s'] / base['per_s']:.2f}x one thread), p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms"
    )
    print(f"errors     : {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print(f"RSS        : {rss_warm:.1f} MB after warm-up, {rss_end:.1f} MB at the end: growth {growth:+.2f} %")
    ok = not errors and growth < 10
    print("PASS" if ok else "FAIL", "(0 errors and RSS growth < 10 %)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
