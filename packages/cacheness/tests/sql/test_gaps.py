"""The interval arithmetic, checked against a set-of-points model."""

from __future__ import annotations

import itertools

from cacheness.sql._gaps import (
    cap_fetches,
    merge,
    remove,
    span_of,
    split_open,
    subtract,
    touched,
    within,
)
from hypothesis import given, settings
from hypothesis import strategies as st

intervals = st.tuples(st.integers(-50, 50), st.integers(0, 30)).map(lambda t: (t[0], t[0] + t[1]))


def points(ivs: list[tuple[int, int]]) -> set[int]:
    return {p for lo, hi in ivs for p in range(lo, hi + 1)}


@settings(max_examples=300, deadline=None)
@given(requested=intervals, covered=st.lists(intervals, max_size=6))
def test_subtract_is_set_difference_merged(
    requested: tuple[int, int], covered: list[tuple[int, int]]
) -> None:
    gaps = subtract(requested, covered)
    assert points(gaps) == points([requested]) - points(covered)
    for (_, hi), (lo, _) in itertools.pairwise(gaps):
        assert lo > hi + 1  # neither overlapping nor adjacent


@settings(max_examples=200, deadline=None)
@given(st.lists(intervals, max_size=8))
def test_merge_keeps_points_and_separates_intervals(ivs: list[tuple[int, int]]) -> None:
    merged = merge(ivs)
    assert points(merged) == points(ivs)
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(merged))


@given(st.lists(intervals, max_size=6), intervals)
def test_remove_cuts_exactly(ivs: list[tuple[int, int]], cut: tuple[int, int]) -> None:
    assert points(remove(ivs, cut)) == points(ivs) - points([cut])


def test_buckets_and_caps() -> None:
    day = 86_400
    assert touched(0, day, day) == (0, 1)  # midnight of day 1 is in bucket 1
    assert touched(1, day - 1, day) == (0, 0)  # a part of one day needs that day
    assert touched(-day - 1, -1, day) == (-2, -1)  # before the epoch
    assert within(0, day, day) == (0, 0)  # day 1 is not whole in [0, day]
    assert within(0, 2 * day - 1, day) == (0, 1)
    assert within(1, 2 * day - 1, day) == (1, 1)
    assert within(1, day - 1, day) is None
    assert span_of(0, 1, day) == (0, 2 * day - 1)
    assert within(*span_of(-3, 4, day), day) == (-3, 4)  # a fetched span covers its buckets
    assert cap_fetches([(1, 1), (3, 3), (5, 5)], 2) == [(1, 5)]
    assert cap_fetches([(1, 1), (3, 3)], 2) == [(1, 1), (3, 3)]
    assert split_open((1, 10), 5) == ((1, 4), (5, 10))
    assert split_open((1, 10), None) == ((1, 10), None)
    assert split_open((6, 10), 5) == (None, (6, 10))
    assert split_open((1, 4), 5) == ((1, 4), None)
