"""The class order: numbers numerically, then names; the same order whatever the input's order."""

from __future__ import annotations

import itertools

import pytest

from convspec.specs.classes import sort_names


def test_numbers_numerically_then_names():
    assert sort_names(["10", "2", "b", "A", "1"]) == ["1", "2", "10", "A", "b"]


@pytest.mark.parametrize("names", [["3", "03", "2", "10"], ["٣", "3", "03"], ["²", "①", "1", "a"]])
def test_order_does_not_depend_on_the_input_order(names):
    """'3', '03' and '٣' are all 3: a tie broken by their text; '²' and '①' are names, not numbers."""
    orders = {tuple(sort_names(p)) for p in itertools.permutations(names)}
    assert len(orders) == 1
