"""Run ``convspec`` in this process and SIGKILL it at a chosen point: the crash-consistency harness.

Usage::

    python tests/reliability/kill_harness.py POINT -- train SPEC --set ... --out DIR

POINT is where the process kills itself (``os.kill(getpid(), SIGKILL)``: no handler, no
cleanup, no flush, exactly as the OOM killer or a power cut would end it):

- ``none``: run normally (the uninterrupted reference uses the same entry point);
- ``step:N``: at the N-th optimizer step of the whole run (1-based), in the middle of an epoch;
- ``write:NAME:K``: during the K-th atomic write of the file NAME (``last.pt``, ``best.pt``,
  ``model.onnx``, ``results.json``...): the temporary file is written, then cut to half its
  size, then the process dies before the rename: a half-written file on disk, as a kill in
  the middle of ``torch.save`` leaves.

Why self-kill rather than a timer in the parent: each point is hit exactly, every run, on a
machine of any speed. The hooks only wrap the functions named (the epoch's ``lr_at``, which
the loop calls once per step, and the atomic writer); nothing in the code under test changes.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _training_module():
    for name in ("convspec.compiler.training.epoch", "convspec.compiler.training.loop"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "lr_at"):
            return module
    raise RuntimeError("cannot find the module that calls lr_at (convspec.compiler.training.epoch)")


def install(point: str) -> None:
    """Arm the kill at ``point`` (see the module docstring)."""
    if point == "none":
        return
    kind, _, arg = point.partition(":")
    if kind == "step":
        target = int(arg)
        training = _training_module()
        original = training.lr_at
        calls = [0]

        def lr_at(*args, **kwargs):
            calls[0] += 1
            if calls[0] == target:
                _die()
            return original(*args, **kwargs)

        training.lr_at = lr_at
        return
    if kind == "write":
        # Why: the hook wraps this process's writer; with the export worker off, model.onnx is
        # written here too (a worker killed with its parent is the same power cut).
        os.environ["CONVSPEC_EXPORT_WORKER"] = "0"
        name, _, k = arg.partition(":")
        target = int(k or 1)
        from convspec.compiler.run import checkpoint
        from convspec.runtime import files

        original = files.atomic_write
        calls = [0]

        def atomic_write(path, write):
            if os.path.basename(os.fspath(path)) == name:
                calls[0] += 1
                if calls[0] == target:

                    def half_then_die(tmp: str) -> None:
                        write(tmp)
                        size = os.path.getsize(tmp)
                        with open(tmp, "r+b") as f:
                            f.truncate(size // 2)
                        _die()

                    return original(path, half_then_die)
            return original(path, write)

        files.atomic_write = atomic_write  # atomic_write_bytes/_text look it up here
        checkpoint.atomic_write = atomic_write  # checkpoint imported the name itself
        return
    raise SystemExit(f"unknown kill point {point!r}")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit("usage: kill_harness.py POINT -- CONVSPEC-ARGS...")
    install(argv[0])
    sys.argv = ["convspec", *argv[2:]]
    from convspec.compiler.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main(sys.argv[1:])
