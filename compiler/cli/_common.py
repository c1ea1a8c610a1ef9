"""What every command shares: the consoles and ``user_errors`` (input mistakes -> one line, exit 1)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from convspec.specs import ConvspecError
from convspec.specs.errors import printable


class _Console(Console):
    """Every string printed, table cells included, with control characters escaped (see ``printable``)."""

    def render_str(self, text: str, **kwargs):
        return super().render_str(printable(text), **kwargs)

    def on_broken_pipe(self) -> None:  # Why: Rich exits 1 here; user_errors exits as SIGPIPE would
        raise BrokenPipeError


out = _Console(highlight=False, soft_wrap=True)
err = _Console(stderr=True, highlight=False, soft_wrap=True)
RANK_ERRORS = "CONVSPEC_RANK_ERRORS"  # a folder where each torchrun process leaves its error


def user_errors(fn):
    """Turn input mistakes into a message on stderr and exit code 1: no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            try:
                return fn(*args, **kwargs)
            except ConvspecError as e:
                rank = os.environ.get("RANK", "0")
                if rank == "0":  # Why: under torchrun, one message, not one per process
                    err.print(str(e), markup=False)
                if os.environ.get(RANK_ERRORS):  # the launcher shows other ranks' messages that differ
                    with contextlib.suppress(OSError):
                        (Path(os.environ[RANK_ERRORS]) / f"rank-{rank}.txt").write_text(str(e), "utf-8")
                raise typer.Exit(e.exit_code) from None
            except KeyboardInterrupt:
                err.print("interrupted", markup=False)
                raise typer.Exit(130) from None
        except BrokenPipeError:  # also while printing one of the messages above
            # Why: the reader of our output left (`| head`). Exit as a process that SIGPIPE ended
            # (128 + 13), with nothing more written; training keeps last.pt, as after Ctrl-C.
            _quiet_std_streams()
            raise typer.Exit(141) from None

    return wrapper


def _quiet_std_streams() -> None:
    """Point stdout and stderr at /dev/null: flushing them at exit would raise again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
        os.close(devnull)
