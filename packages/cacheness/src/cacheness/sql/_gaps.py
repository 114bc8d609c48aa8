"""Interval arithmetic on integer grid points: the heart of gap detection.

Every position handled here is a *grid index*, the index of a bucket: for a
time series with a ``time_increment`` of one day, bucket ``k`` is day ``k``
after the epoch (UTC), from its midnight up to the next; for an integer
sequence with ``ordered_increment=N`` it is the values ``k * N`` to
``k * N + N - 1``. Buckets, not points: rows stamped off the grid (closes at
16:00, weekly rows on Mondays while the grid's weeks start on Thursdays) are
inside a bucket and fetched with it. Intervals are closed ``(lo, hi)`` pairs
of indices, so two intervals are adjacent when ``hi + 1 == lo``. Working on
indices rather than timestamps makes "adjacent" exact and keeps this module
free of pandas.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "Interval",
    "cap_fetches",
    "ceil_div",
    "merge",
    "remove",
    "span_of",
    "split_open",
    "subtract",
    "touched",
    "within",
]

Interval = tuple[int, int]


def ceil_div(a: int, b: int) -> int:
    # Python's // floors towards -inf, so this is exact for negatives too
    # (dates before 1970 are grid indices below zero).
    return -((-a) // b)


def touched(lo_value: int, hi_value: int, step: int) -> Interval:
    """The buckets ``[lo_value, hi_value]`` reaches into (what a request needs)."""
    return (lo_value // step, hi_value // step)


def within(lo_value: int, hi_value: int, step: int) -> Interval | None:
    """The buckets wholly inside ``[lo_value, hi_value]`` (what a fetch of that span
    covers), or None if there are none."""
    lo = ceil_div(lo_value, step)
    hi = (hi_value + 1) // step - 1
    if lo > hi:
        return None
    return (lo, hi)


def span_of(lo: int, hi: int, step: int) -> Interval:
    """The values of buckets ``lo`` to ``hi``: from the first one's start to the last
    one's last value."""
    return (lo * step, (hi + 1) * step - 1)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort and join overlapping or adjacent intervals."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def subtract(requested: Interval, covered: Iterable[Interval]) -> list[Interval]:
    """The parts of ``requested`` that no interval of ``covered`` contains, merged and sorted."""
    lo, hi = requested
    gaps: list[Interval] = []
    cursor = lo
    for c_lo, c_hi in merge(covered):
        if c_hi < cursor:
            continue
        if c_lo > hi:
            break
        if c_lo > cursor:
            gaps.append((cursor, c_lo - 1))
        cursor = c_hi + 1
        if cursor > hi:
            break
    if cursor <= hi:
        gaps.append((cursor, hi))
    return gaps


def cap_fetches(gaps: list[Interval], max_fetches: int) -> list[Interval]:
    """At most ``max_fetches`` fetches: beyond that, one fetch covering every gap.

    Refetching the cached islands between many small gaps costs less than
    many round trips to a slow source, and the rows are upserted anyway.
    """
    if len(gaps) <= max_fetches:
        return gaps
    return [(gaps[0][0], gaps[-1][1])]


def split_open(gap: Interval, first_open: int | None) -> tuple[Interval | None, Interval | None]:
    """Split ``gap`` into its closed part (before ``first_open``) and its still-open part."""
    lo, hi = gap
    if first_open is None or hi < first_open:
        return gap, None
    if lo >= first_open:
        return None, gap
    return (lo, first_open - 1), (first_open, hi)


def remove(existing: Iterable[Interval], cut: Interval) -> list[Interval]:
    """The parts of each interval of ``existing`` outside ``cut`` (not merged)."""
    c_lo, c_hi = cut
    out: list[Interval] = []
    for lo, hi in existing:
        if hi < c_lo or lo > c_hi:
            out.append((lo, hi))
            continue
        if lo < c_lo:
            out.append((lo, c_lo - 1))
        if hi > c_hi:
            out.append((c_hi + 1, hi))
    return out
