"""How long the ``convspec`` commands that must not import torch take to start and finish.

Each command runs as a fresh subprocess, ``--repeat`` times; the baseline is ``python -c pass``
measured in the same run. Prints the median wall time of each, its ratio to the baseline,
and whether the median is within the budget (0.5 s: a validate should feel instant).

    python bench/cli_startup.py [--repeat 10] [--budget 0.5] [--json]

Add a command by appending to COMMANDS: (label, arguments after ``convspec``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (label, arguments after `convspec`); paths are relative to the repository root.
COMMANDS: list[tuple[str, list[str]]] = [
    ("validate digits", ["validate", "examples/digits.yaml"]),
    ("summary resnet18", ["summary", "examples/resnet18.yaml"]),
    ("schema", ["schema"]),
    # ("predict", ["predict", "runs/digits-cnn/model.onnx", "some.png"]),  # once runtime/ has it
]


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
    for label, cmd in COMMANDS:
        median = statistics.median(time_runs(prefix + cmd, args.repeat))
        results.append({"command": label, "median_s": median, "ratio": median / base, "within_budget": median <= args.budget})

    if args.json:
        print(json.dumps({"baseline_s": base, "budget_s": args.budget, "repeat": args.repeat, "commands": results}, indent=2))
    else:
        print(f"{'command':<22}{'median':>10}{'x python -c pass':>18}  within {args.budget:g} s")
        print(f"{'python -c pass':<22}{base:>9.3f}s{1.0:>17.1f}x")
        for r in results:
            print(f"{r['command']:<22}{r['median_s']:>9.3f}s{r['ratio']:>17.1f}x  {'yes' if r['within_budget'] else 'NO'}")
    return 0 if all(r["within_budget"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
