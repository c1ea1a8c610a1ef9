"""What every command shares: the consoles and ``user_errors`` (input mistakes -> one line, exit 1)."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import typer
from rich.console import Console

from convspec.specs import ConvspecError
from convspec.specs.errors import printable


class _Console(Console):
    """Every string printed, table cells included, with control characters escaped (see ``printable``)."""

    def render_str(self, text: str, **kwargs):
        return super().render_str(printable(text), **kwargs)


out = _Console(highlight=False, soft_wrap=True)
err = _Console(stderr=True, highlight=False, soft_wrap=True)
RANK_ERRORS = "CONVSPEC_RANK_ERRORS"  # a folder where each torchrun process leaves its error


def user_errors(fn):
    """Turn input mistakes into a message on stderr and exit code 1: no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
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

    return wrapper
