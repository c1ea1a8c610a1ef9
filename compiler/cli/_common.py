"""What every command shares: the consoles and ``user_errors`` (input mistakes -> one line, exit 1)."""

from __future__ import annotations

import functools
import os

import typer
from rich.console import Console

from convspec.specs import ConvspecError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def user_errors(fn):
    """Turn input mistakes into a message on stderr and exit code 1: no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConvspecError as e:
            if os.environ.get("RANK", "0") == "0":  # Why: under torchrun, one message, not one per process
                err.print(str(e), markup=False)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper
