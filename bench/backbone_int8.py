"""INT8 against fp32 for backbone models: test accuracy and speed of ``model.int8.onnx`` vs ``model.onnx``.

For each backbone (default resnet18 and mobilenetv3_small_100; random initial weights, all
stages trainable) a spec on scikit-learn's digits at 3x32x32 is trained for ``--epochs``
epochs, exported with the parity gate, and quantized (``export.quantize: int8``); the script
prints the fp32 and INT8 test accuracy, their difference and the INT8 speed ratio that
``export_onnx`` measured in the same run. No network: timm builds the models from scratch.

    python bench/backbone_int8.py [--epochs 4] [--size 32] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

SPEC = """
version: 1
name: {name}-digits
task: multiclass
data:
  source: {{type: builtin, name: digits}}
  split: {{train: 0.8, val: 0.1, test: 0.1, seed: 0}}
input: {{channels: 3, size: [{size}, {size}]}}
preprocess:
  - {{type: normalize, mean: imagenet, std: imagenet}}
model:
  layers:
    - {{type: backbone, name: {name}, weights: none}}
training: {{epochs: {epochs}, batch_size: 64, optimizer: {{type: adam, lr: 0.002}}, device: cpu}}
export: {{quantize: int8, calibration_images: 256}}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=["resnet18", "mobilenetv3_small_100"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from convspec.compiler import train
    from convspec.specs import load_spec_text

    rows = []
    with tempfile.TemporaryDirectory(prefix="convspec-bb-int8-") as d:
        for name in args.names:
            spec = load_spec_text(SPEC.format(name=name, size=args.size, epochs=args.epochs), f"{name}.yaml")
            run = train(spec, out=d, progress=False, log=lambda m: print(f"  {m}", file=sys.stderr))
            info = json.loads(Path(run.export_json).read_text())
            q = info["int8"]
            rows.append(
                {
                    "backbone": name,
                    "parity_max_abs_diff": info["max_abs_diff"],
                    "parity_top1": info["top1_agreement"],
                    "fp32_accuracy": q["fp32_accuracy"],
                    "int8_accuracy": q["accuracy"],
                    "delta_points": (q["accuracy"] - q["fp32_accuracy"]) * 100,
                    "int8_speedup": q["speedup"],
                    "test_images": q["images"],
                }
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'backbone':<24}{'fp32 acc':>10}{'int8 acc':>10}{'delta pt':>10}{'int8 speed':>12}{'parity':>10}")
    for r in rows:
        print(
            f"{r['backbone']:<24}{r['fp32_accuracy'] * 100:>9.2f}%{r['int8_accuracy'] * 100:>9.2f}%"
            f"{r['delta_points']:>+10.2f}{r['int8_speedup']:>11.2f}x{r['parity_max_abs_diff']:>10.1e}"
        )
    print(f"digits at 3x{args.size}x{args.size}, {args.epochs} epochs, {rows[0]['test_images']} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
