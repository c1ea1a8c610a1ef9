"""Ctrl-C held for the length of a block, then raised: for code that would lose it.

Why by hand: pydantic-core turns an exception raised inside a Python callable it calls while
serializing (the ``export.threshold`` discriminator) into a warning. A Ctrl-C that landed there
was lost, and a ``--folds`` run trained on to the end (seen in a quarter of tries at a fold's start).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def held_interrupt() -> Iterator[None]:
    """Run the block with SIGINT recorded instead of raised; afterwards, deliver it as it would have been.

    Outside the main thread (where no signal handler runs) or with SIGINT not handled by Python,
    the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, _frame: pending.append(signum))
    except (ValueError, OSError):  # an interpreter that is not the main one
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt here
