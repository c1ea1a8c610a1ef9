"""How long the ``convspec`` commands that must not import torch take to start and finish.

Each command runs as a fresh subprocess, ``--repeat`` times; the baseline is ``python -c pass``
measured in the same run. Prints the median wall time of each, its ratio to the baseline,
and whether the median is within the budget (0.5 s: a validate should feel instant).

    python bench/cli_startup.py [--repeat 10] [--budget 0.5] [--json]

Add a command by appending to COMMANDS: (label, arguments after ``convspec``). ``predict`` of
one PNG with a small generated model is timed too, against its own budget (1.0 s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (label, arguments after `convspec`); paths are relative to the repository root.
COMMANDS: list[tuple[str, list[str]]] = [
    ("validate digits", ["validate", "examples/digits.yaml"]),
    ("summary resnet18", ["summary", "examples/resnet18.yaml"]),
    ("schema", ["schema"]),
]
PREDICT_BUDGET = 1.0  # predict also imports onnxruntime and opens a session: its own budget


def predict_files(folder: Path) -> tuple[Path, Path]:
    """A small uint8 (N, 1, 16, 16) -> 10-class conv model with convspec metadata, and a PNG.

    Written with ``onnx.helper`` (no torch, no training), about the digits example's size.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(0, 0.1, (32, 1, 3, 3)),
        "b1": np.zeros(32),
        "w2": rng.normal(0, 0.1, (64, 32, 3, 3)),
        "b2": np.zeros(64),
        "w3": rng.normal(0, 0.1, (10, 64)),
        "b3": np.zeros(10),
        "scale": np.array(1 / 255),
    }
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], ["x"]),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "startup",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 1, 16, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(
        model,
        {
            "convspec.classes": json.dumps([str(i) for i in range(10)]),
            "convspec.task": "multiclass",
            "convspec.channels": "1",
            "convspec.input_size": "[16, 16]",
            "convspec.resize": "stretch",
        },
    )
    onnx.save(model, folder / "model.onnx")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / "digit.png")
    return folder / "model.onnx", folder / "digit.png"


def convspec_command() -> list[str]:
    """The installed ``convspec`` script next to this interpreter, else ``python -m convspec.compiler``."""
    script = shutil.which("convspec", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "convspec.compiler"]


def time_runs(argv: list[str], repeat: int) -> list[float]:
    """Wall seconds of ``repeat`` runs of ``argv`` (one untimed warm-up run first: the file cache)."""
    times = []
    for i in range(repeat + 1):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr}")
        if i:
            times.append(elapsed)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per command (default: 10)")
    parser.add_argument("--budget", type=float, default=0.5, help="median seconds allowed per command (default: 0.5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    base = statistics.median(time_runs([sys.executable, "-c", "pass"], args.repeat))
    prefix = convspec_command()
    results = []
    with tempfile.TemporaryDirectory(prefix="convspec-startup-") as tmp:
        model, image = predict_files(Path(tmp))
        commands = [(label, cmd, args.budget) for label, cmd in COMMANDS]
        commands.append(("predict 1 image", ["predict", str(model), str(image)], max(args.budget, PREDICT_BUDGET)))
        for label, cmd, budget in commands:
            median = statistics.median(time_runs(prefix + cmd, args.repeat))
            results.append(
                {
                    "command": label,
                    "median_s": median,
                    "ratio": median / base,
                    "budget_s": budget,
                    "within_budget": median <= budget,
                }
            )

    if args.json:
        print(
            json.dumps(
                {"baseline_s": base, "budget_s": args.budget, "repeat": args.repeat, "commands": results}, indent=2
            )
        )
    else:
        print(f"{'command':<22}{'median':>10}{'x python -c pass':>18}  within {args.budget:g} s")
        print(f"{'python -c pass':<22}{base:>9.3f}s{1.0:>17.1f}x")
        for r in results:
            print(
                f"{r['command']:<22}{r['median_s']:>9.3f}s{r['ratio']:>17.1f}x  {'yes' if r['within_budget'] else 'NO'}"
                + (f" (budget {r['budget_s']:g} s)" if r["budget_s"] != args.budget else "")
            )
    return 0 if all(r["within_budget"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
