"""Inference throughput: ONNX Runtime against PyTorch eager, and INT8 against fp32.

Two models: (a) the digits example, trained as the example says and exported with
``convspec export --int8`` (so the INT8 accuracy is real); (b) a small 3x64x64 RGB conv net
built from an inline spec with random weights (speed only). Each is run at batch 1 and 256
by three engines: PyTorch eager (the compiled ``ConvspecModel`` under ``inference_mode``),
ORT fp32 and ORT INT8 (CPU provider, full graph optimization). Every measurement runs in a
fresh process (``bench/_infer_worker.py``) with the same thread count; the three engines'
measurements are interleaved, round by round, and the best round of each is kept.

    python bench/infer.py                  # trains digits (as examples/digits.yaml says) in a temporary folder
    python bench/infer.py --run runs/digits-cnn --threads 2 --json out.json

Goals: ORT/eager >= 4x at batch 1 and 256 on digits; INT8 >= 1.3x fp32 with <= 0.5 pt
accuracy lost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_infer_worker.py"
ENGINES = ("eager", "fp32", "int8")

RGB64_SPEC = """
version: 1
name: rgb64
task: multiclass
classes: 10
data: {source: {type: builtin, name: digits}}
input: {channels: 3, size: [64, 64]}
preprocess:
  - {type: normalize, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
model:
  layers:
    - {type: conv, filters: 32, kernel: 3, activation: relu, batch_norm: true}
    - {type: max_pool, size: 2}
    - {type: conv, filters: 64, kernel: 3, activation: relu, batch_norm: true}
    - {type: max_pool, size: 2}
    - {type: conv, filters: 128, kernel: 3, activation: relu, batch_norm: true}
    - {type: max_pool, size: 2}
    - {type: conv, filters: 128, kernel: 3, activation: relu, batch_norm: true}
    - {type: global_avg_pool}
    - {type: dense, units: 128, activation: relu}
"""


def prepare_digits(args, work: Path) -> dict:
    """A trained digits run with model.onnx and model.int8.onnx; its INT8 accuracy report."""
    from convspec.compiler.export.onnx import export_onnx
    from convspec.compiler.run.folder import Run

    if args.run:
        run = Run(Path(args.run))
    else:
        from convspec.compiler.training.loop import train
        from convspec.specs import load_spec

        spec = load_spec(
            REPO / "examples" / "digits.yaml", overrides=[f"training.epochs={args.epochs}"] if args.epochs else None
        )
        print(f"training digits for {spec.training.epochs} epochs ...", file=sys.stderr)
        run = train(spec, out=work, progress=False, export=False, log=lambda _m: None)
    if (
        not run.onnx_int8.exists()
        or not run.export_json.exists()
        or "int8" not in json.loads(run.export_json.read_text())
    ):
        export_onnx(run, int8=True, log=lambda m: print(m, file=sys.stderr))
    info = json.loads(run.export_json.read_text())
    weights = run.best if run.best.exists() else run.last
    from convspec.specs import load_spec_text

    c, (h, w) = (lambda i: (i.channels, i.size))(load_spec_text(run.spec.read_text()).input)
    return {
        "name": f"digits {c}x{h}x{w}",
        "fp32": run.onnx,
        "int8": run.onnx_int8,
        "spec": run.spec,
        "weights": weights,
        "export": info,
    }


def prepare_rgb64(work: Path) -> dict:
    """The inline RGB spec, random weights: model.onnx, model.int8.onnx, spec.yaml, weights.pt."""
    import torch

    from convspec.compiler.export.onnx import export_to_file
    from convspec.compiler.export.quantize import quantize_int8
    from convspec.compiler.model.builder import build_model
    from convspec.specs import load_spec_text

    torch.manual_seed(0)
    spec = load_spec_text(RGB64_SPEC, "rgb64.yaml")
    names = [str(i) for i in range(10)]
    model = build_model(spec, num_classes=10, class_names=names).eval()
    folder = work / "rgb64"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(spec.to_yaml())
    torch.save({"model": model.state_dict(), "class_names": names}, folder / "weights.pt")
    fp32 = export_to_file(model, spec, folder / "model.onnx", names)
    calib = np.random.default_rng(1).integers(0, 256, (128, 3, 64, 64), dtype=np.uint8)
    (folder / "model.int8.onnx").write_bytes(quantize_int8(fp32.read_bytes(), calib))
    return {
        "name": "rgb 3x64x64 (random weights)",
        "fp32": fp32,
        "int8": folder / "model.int8.onnx",
        "spec": folder / "spec.yaml",
        "weights": folder / "weights.pt",
        "export": None,
    }


class Worker:
    """One engine on one model and batch size, in its own process, measuring on request."""

    def __init__(self, engine: str, model: dict, batch: int, args):
        target = [str(model["spec"]), str(model["weights"])] if engine == "eager" else [str(model[engine])]
        self.cmd = [
            sys.executable,
            str(WORKER),
            "eager" if engine == "eager" else "ort",
            *target,
            "--batch",
            str(batch),
            "--threads",
            str(args.threads),
            "--seconds",
            str(args.seconds),
            "--repeats",
            str(args.repeats),
            "--serve",
        ]
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._read()  # ready: imported, model loaded, warmed up

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker failed: {' '.join(self.cmd)}\n{self.proc.stderr.read()}")
        return json.loads(line)

    def measure(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._read()["images_per_s"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def measure_all(model: dict, batch: int, args) -> dict[str, float]:
    """Best images/s of each engine over ``args.rounds`` interleaved rounds, a fresh process each.

    Why interleaved, fresh and best-of: on a shared machine, load from other processes comes
    and goes, and where a process's threads land on the cores is decided when it starts (on 2
    cores, two spinning pools sharing one core halve a batch-1 rate for the process's whole
    life). All of that only ever slows a measurement down; a fresh process per round gives
    every engine the same chances of a good start and a quiet moment, so the ratios of the
    best rounds are the fairest.
    """
    best = dict.fromkeys(ENGINES, 0.0)
    for _ in range(args.rounds):
        for e in ENGINES:
            time.sleep(0.3)  # let the previous engine's worker threads stop spinning
            w = Worker(e, model, batch, args)
            try:
                best[e] = max(best[e], w.measure())
            finally:
                w.close()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a digits run folder to use instead of training one")
    ap.add_argument(
        "--epochs", type=int, default=None, help="epochs when training digits here (default: the example's)"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every engine")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--seconds", type=float, default=0.5, help="seconds per timing")
    ap.add_argument("--repeats", type=int, default=3, help="timings per measurement (the median is kept)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="interleaved measurements per engine, a fresh process each (the best is kept)",
    )
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()

    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="convspec-bench-") as tmp:
        work = Path(tmp)
        models = [prepare_digits(args, work), prepare_rgb64(work)]
        for m in models:
            for batch in args.batches:
                rates = measure_all(m, batch, args)
                rows.append(
                    {
                        "model": m["name"],
                        "batch": batch,
                        **rates,
                        "ort_vs_eager": rates["fp32"] / rates["eager"],
                        "int8_vs_fp32": rates["int8"] / rates["fp32"],
                    }
                )
                print(f"  {m['name']}, batch {batch}: done", file=sys.stderr)
            if m["export"] and m["export"].get("int8"):
                q = m["export"]["int8"]
                notes.append(
                    {
                        "model": m["name"],
                        "split": q["split"],
                        "images": q["images"],
                        "fp32_accuracy": q["fp32_accuracy"],
                        "int8_accuracy": q["accuracy"],
                        "parity_max_abs_diff": m["export"]["max_abs_diff"],
                        "parity_top1_agreement": m["export"]["top1_agreement"],
                    }
                )

    print(
        f"\nimages/s (best of {args.rounds} interleaved rounds), {args.threads} thread(s) per engine, "
        "a fresh process per measurement\n"
    )
    cols = ("eager", "ORT fp32", "ORT int8", "ORT/eager", "int8/fp32")
    head = f"{'model':<30} {'batch':>5} " + " ".join(f"{c:>10}" for c in cols)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:<30} {r['batch']:>5} {r['eager']:>10,.0f} {r['fp32']:>10,.0f} {r['int8']:>10,.0f} "
            f"{r['ort_vs_eager']:>9.2f}x {r['int8_vs_fp32']:>9.2f}x"
        )
    for n in notes:
        loss = (n["fp32_accuracy"] - n["int8_accuracy"]) * 100
        print(
            f"\n{n['model']}: {n['split']} accuracy fp32 {n['fp32_accuracy'] * 100:.2f} %, int8 "
            f"{n['int8_accuracy'] * 100:.2f} % ({loss:+.2f} pt lost) on {n['images']} images; "
            f"export parity: top-1 {n['parity_top1_agreement'] * 100:.1f} %, max |diff| {n['parity_max_abs_diff']:.1e}"
        )
    digits = [r for r in rows if r["model"].startswith("digits")]
    print(
        "\ngoals (digits): ORT/eager >= 4x: "
        + ", ".join(
            f"batch {r['batch']} {r['ort_vs_eager']:.2f}x {'ok' if r['ort_vs_eager'] >= 4 else 'MISSED'}"
            for r in digits
        )
    )
    print(
        "goals: INT8 >= 1.3x fp32: "
        + ", ".join(
            f"{r['model'].split()[0]} b{r['batch']} {r['int8_vs_fp32']:.2f}x "
            f"{'ok' if r['int8_vs_fp32'] >= 1.3 else 'MISSED'}"
            for r in rows
        )
    )
    for n in notes:
        loss = (n["fp32_accuracy"] - n["int8_accuracy"]) * 100
        print(f"goals: INT8 accuracy loss <= 0.5 pt: {loss:+.2f} pt {'ok' if loss <= 0.5 else 'MISSED'}")
    # What INT8 can gain at batch 1: it speeds up the arithmetic (one image's share of a
    # batch-256 run) as much as at batch 256; the rest of a batch-1 call is ORT's per-call
    # overhead, the same in fp32 and int8.
    by = {(r["model"], r["batch"]): r for r in rows}
    for m in dict.fromkeys(r["model"] for r in rows):
        if (m, 1) in by and (m, 256) in by:
            call, share, gain = 1e6 / by[m, 1]["fp32"], 1e6 / by[m, 256]["fp32"], by[m, 256]["int8_vs_fp32"]
            bound = call / max(call - share + share / gain, 1e-9)
            print(
                f"{m}: a batch-1 fp32 call takes {call:.1f} us, of which about {min(share, call):.1f} us is "
                f"arithmetic; sped up {gain:.2f}x as at batch 256, INT8 at batch 1 could reach {bound:.2f}x"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows, "accuracy": notes}, indent=1))


if __name__ == "__main__":
    main()
