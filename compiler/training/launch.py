"""``convspec train --nproc N``: re-run the same command under torchrun (torch's launcher)."""

from __future__ import annotations

import subprocess
import sys


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run ``torchrun --nproc-per-node N -m convspec.compiler <argv without --nproc>``."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        args.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "convspec.compiler",
        *args,
    ]
    return subprocess.call(cmd)
