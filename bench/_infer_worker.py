"""One engine, one model, one batch size: images per second, as one JSON line on stdout.

Run by ``bench/infer.py``, one process per measurement. Why a process each: on a small
machine, PyTorch's idle OpenMP threads (spinning after a forward pass) slow ONNX Runtime
down when both live in one process; separate processes measure each engine alone.

    python bench/_infer_worker.py ort   MODEL.onnx          --batch 256 --threads 2
    python bench/_infer_worker.py eager SPEC.yaml WEIGHTS.pt --batch 1   --threads 2
    python bench/_infer_worker.py ort   MODEL.onnx --serve      # one measurement per "go" line
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def measure(run, x: np.ndarray, seconds: float, repeats: int) -> float:
    """Median images/s over ``repeats`` rounds of at least ``seconds`` each, after a warm-up."""
    for _ in range(3):
        run(x)
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            run(x)
            n += len(x)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        rates.append(n / elapsed)
    return float(np.median(rates))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=["ort", "eager"])
    ap.add_argument("model", help="ort: the .onnx file; eager: the spec YAML")
    ap.add_argument("weights", nargs="?", help="eager: a state_dict saved with torch.save (or a checkpoint)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--serve", action="store_true", help="measure once per 'go' line on stdin")
    a = ap.parse_args()

    if a.engine == "ort":
        from convspec.runtime import Predictor

        p = Predictor(a.model, providers="cpu", intra_op_threads=a.threads)
        shape = p.input_shape
        run = p.predict_arrays
        extra = {"providers": p.providers}
    else:
        import torch

        from convspec.compiler.model.builder import build_model
        from convspec.specs import load_spec_text

        torch.set_num_threads(a.threads)
        spec = load_spec_text(open(a.model, encoding="utf-8").read(), a.model)
        state = torch.load(a.weights, map_location="cpu", weights_only=True)
        weights = state.get("model", state)
        names = state.get("class_names")
        model = build_model(spec, num_classes=len(names) if names else None, class_names=names).eval()
        model.load_state_dict(weights)
        shape = model.input_shape

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        extra = {"torch": torch.__version__}
    x = np.random.default_rng(0).integers(0, 256, (a.batch, *shape), dtype=np.uint8)
    if not a.serve:
        rate = measure(run, x, a.seconds, a.repeats)
        print(json.dumps({"engine": a.engine, "batch": a.batch, "threads": a.threads, "images_per_s": rate, **extra}))
        return
    # Serve: one measurement per "go" line, so a driver can interleave engines round by round
    # while the others wait, blocked on their stdin (idle, not spinning).
    run(x)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        rate = measure(run, x, a.seconds, a.repeats)
        print(
            json.dumps({"engine": a.engine, "batch": a.batch, "threads": a.threads, "images_per_s": rate, **extra}),
            flush=True,
        )


if __name__ == "__main__":
    main()
