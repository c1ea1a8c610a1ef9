"""``convspec train --nproc N``: re-run the same command under torchrun (torch's launcher).

What can be checked before launching (the spec, the resumed checkpoint, ``--out``) is checked
in the parent, so a mistake is one message rather than one per process. A process that still
fails prints its own one-line error (rank 0 only, see ``cli._common``); torchrun's own report
of the failure (a traceback and a table) is silenced, and its exit code is the process's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Why not `python -m torch.distributed.run`: its main() prints a ChildFailedError traceback and
# table after the child's own message; calling run() ourselves lets us exit with the child's code.
_QUIET_TORCHRUN = """
import logging, sys
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run
logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
logging.getLogger("torch.distributed.run").setLevel(logging.ERROR)  # its OMP_NUM_THREADS banner
try:
    run(get_args_parser().parse_args(sys.argv[1:]))
except ChildFailedError as e:
    codes = [f.exitcode for f in e.failures.values()]
    sys.exit(next((c for c in codes if c and c > 0), 1))
except KeyboardInterrupt:
    sys.exit(130)
"""


def check_before_launch(spec_path, overrides, resume, out, *, allow_out_in_data: bool = False) -> None:
    """Load the spec (or open the resumed run) and check ``--out``, as each process would.

    Raises:
        ConvspecError: what the processes would each raise (SpecError, CheckpointError, WriteError).
    """
    from convspec.specs import load_spec

    from ..run.files import check_run_out
    from .resume import open_checkpoint, resume_spec

    if resume is not None:
        run, ckpt = open_checkpoint(resume)
        resume_spec(run, ckpt, spec_path, overrides)
        return
    check_run_out(out, load_spec(spec_path, overrides=overrides), allow_in_data=allow_out_in_data)


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run ``torchrun --nproc-per-node N -m convspec.compiler <argv without --nproc>``; its exit code."""
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
        "-c",
        _QUIET_TORCHRUN,
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "convspec.compiler",
        *args,
    ]
    with tempfile.TemporaryDirectory(prefix="convspec-ranks-") as errors:
        env = {
            **os.environ,
            "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::FutureWarning"),
            "CONVSPEC_RANK_ERRORS": errors,  # see cli._common.user_errors
        }
        code = subprocess.call(cmd, env=env)
        if code:
            _other_ranks_errors(Path(errors))
    return code


def _other_ranks_errors(folder: Path) -> None:
    """Print the errors of ranks other than 0 that differ from rank 0's (which it printed itself)."""
    texts = {int(p.stem.split("-")[1]): p.read_text("utf-8") for p in folder.glob("rank-*.txt")}
    shown = {texts.get(0)}
    for rank in sorted(r for r in texts if r != 0):
        if texts[rank] not in shown:
            print(f"rank {rank}: {texts[rank]}", file=sys.stderr)
            shown.add(texts[rank])
