"""Ctrl-C during a spec's serialization is delivered after it, never lost."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from convspec.specs import load_spec
from convspec.specs.interrupts import held_interrupt

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits.yaml"


def test_held_interrupt_delivers_ctrl_c_after_the_block():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with held_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("the block ran to its end")
    assert reached and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_landing_in_the_threshold_discriminator_is_raised_not_swallowed(monkeypatch):
    """pydantic-core turns an exception raised in the threshold discriminator while serializing
    into a warning: a Ctrl-C landing there was lost, and a --folds run trained on to the end."""
    from convspec.specs import spec as spec_module

    def ctrl_c_here(value):  # runs as the discriminator: with its module's globals, so imports inside
        import os
        import signal

        os.kill(os.getpid(), signal.SIGINT)
        return "fixed"

    spec = load_spec(DIGITS)  # export.threshold: 0.5, the "fixed" form
    monkeypatch.setattr(spec_module._threshold_kind, "__code__", ctrl_c_here.__code__)
    with pytest.raises(KeyboardInterrupt):
        spec.to_dict()
