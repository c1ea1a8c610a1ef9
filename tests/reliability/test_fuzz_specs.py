"""Hypothesis drives bench/fuzz_specs.py's mutations (300 examples): the loader answers every mutated
example with a Spec or a SpecError whose issues all carry FILE:LINE:COL, in bounded time.

The 10,000-spec run is ``python bench/fuzz_specs.py`` (seeded ``random``, reproducible).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convspec.specs import SpecError, load_spec_text

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("fuzz_specs", REPO / "bench" / "fuzz_specs.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)
SOURCES = {p.name: p.read_text("utf-8") for p in sorted((REPO / "examples").glob("*.yaml"))}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(name=st.sampled_from(sorted(SOURCES)), rng=st.randoms(use_true_random=False), as_bytes=st.booleans())
def test_mutated_examples_load_or_fail_with_positions(name, rng, as_bytes):
    text, _ = fuzz.mutate(SOURCES[name], rng)
    data = text.encode("utf-8") if as_bytes else text
    t0 = time.perf_counter()
    try:
        load_spec_text(data, name, base_dir=str(REPO / "examples"))
    except SpecError as e:
        assert e.issues
        for issue in e.issues:
            assert issue.line is not None and issue.line >= 1 and issue.col is not None, str(issue)
            assert str(issue).startswith(f"{name}:{issue.line}:{issue.col}: "), str(issue)
    assert time.perf_counter() - t0 < 5


def test_bench_counts_nothing_unexpected_on_a_small_seeded_run(capsys):
    assert fuzz.main(["--count", "200", "--seed", "11"]) == 0
    out = capsys.readouterr().out
    assert "unexpected exceptions: 0   SpecErrors without a line number: 0" in out
