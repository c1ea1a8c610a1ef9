"""SIGKILL ``convspec train`` at 5 points, resume each, and count the runs that end exactly like an
uninterrupted one: prints ``5/5`` when crash consistency holds.

The 5 points (tests/reliability/kill_harness.py makes the process kill itself there): mid
epoch 1, mid epoch 3, inside the write of epoch 2's last.pt (a half-written temp file), inside
a best.pt write, and inside the write of model.onnx during export. ``--random N`` adds N kills
from outside at seeded random times (a plain ``kill -9`` from this process), wherever they
fall. A run passes when every artifact left after the kill loads, ``convspec train --resume``
finishes, and test metrics, metrics.jsonl (timings aside), best and last weights equal the
reference run's.

Usage::

    python bench/kill_resume.py [--random 0] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "reliability"


def _load_test_module():
    spec = importlib.util.spec_from_file_location("crash_resume", TESTS / "test_crash_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def external_kill(t, out: Path, after_s: float) -> subprocess.Popen:
    """Start training with no kill point and SIGKILL it from outside after ``after_s`` seconds."""
    args = ["train", str(t.SPEC), "--out", str(out), "--device", "cpu"]
    for s in t.SETS:
        args += ["--set", s]
    proc = subprocess.Popen(
        [sys.executable, str(t.HARNESS), "none", "--", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=t.env(),
        cwd=out.parent,
    )
    try:
        proc.wait(timeout=after_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return proc


def judge(t, run: Path, reference: Path) -> str | None:
    """None when the run survived the kill and its resume equals the reference; else why not."""
    try:
        present = t.check_nothing_half_written(run)
    except Exception as e:  # noqa: BLE001
        return f"a half-written artifact after the kill: {type(e).__name__}: {e}"
    if "last.pt" not in present:
        return f"no last.pt to resume from (killed before the first checkpoint; present: {present})"
    done = t.resume(run)
    if done.returncode != 0:
        return f"resume failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
    try:
        t.check_nothing_half_written(run)
        if t.outcome(run) != t.outcome(reference):
            return "metrics differ from the uninterrupted run"
        t.assert_same_weights(run / "best.pt", reference / "best.pt")
        t.assert_same_weights(run / "last.pt", reference / "last.pt")
    except AssertionError as e:
        return f"differs from the uninterrupted run: {e}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--random", type=int, default=0, help="extra kills from outside at random times")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t = _load_test_module()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="kill-resume-") as tmp:
        tmp = Path(tmp)
        (tmp / "reference").mkdir()
        t0 = time.perf_counter()
        ref = t.train_under("none", tmp / "reference")
        ref_s = time.perf_counter() - t0
        if ref.returncode != 0:
            print(ref.stderr[-2000:])
            return 1
        reference = tmp / "reference" / t.NAME
        print(f"reference run: {ref_s:.1f} s")
        passed, total = 0, 0
        for where, point in t.KILL_POINTS.items():
            out = tmp / where
            out.mkdir()
            t1 = time.perf_counter()
            killed = t.train_under(point, out)
            total += 1
            if killed.returncode != -signal.SIGKILL:
                why = f"not killed (exit {killed.returncode})"
            else:
                why = judge(t, out / t.NAME, reference)
            passed += why is None
            print(f"  {where:32s} {'ok' if why is None else 'FAIL: ' + why}  ({time.perf_counter() - t1:.1f} s)")
        for k in range(args.random):
            after = rng.uniform(2.0, ref_s)
            out = tmp / f"random-{k}"
            out.mkdir()
            external_kill(t, out, after)
            total += 1
            why = judge(t, out / t.NAME, reference)
            passed += why is None
            label = f"kill -9 after {after:.2f} s"
            print(f"  {label:32s} {'ok' if why is None else 'FAIL: ' + why}")
    print(f"{passed}/{total}")
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
