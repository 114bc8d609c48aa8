"""A ``get_data`` request normalised, and the fetches the coverage ledger says it needs.

These are functions of the cache, not methods of a class of their own, so
they read its settings (``max_fetches``, ``batch_fetch``, the clock) when
called, as the methods they came from did.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd  # type: ignore[import-untyped, unused-ignore]
import sqlalchemy as sa

from cacheness.sql import _gaps
from cacheness.sql._gaps import Interval
from cacheness.sql._ledger import chunks
from cacheness.sql._schema import TableSchema
from cacheness.sql._time import timestamp_to_us, to_utc, us_to_timestamp
from cacheness.storage.errors import CacheConfigError, CacheKeyError

if TYPE_CHECKING:
    from cacheness.sql._cache import SqlCache

__all__: list[str] = []

_LIST_TYPES = (list, tuple, set, frozenset, np.ndarray, pd.Index, pd.Series)
# Key values bound in one statement or fetcher call at most (PostgreSQL takes 65,535
# bound values per statement, SQLite as built by default 32,766).
IN_CHUNK = 10_000


@dataclass
class _Request:
    params: dict[str, Any]
    key_lists: list[list[Any]]
    keys: list[tuple[Any, ...]]
    labels: list[str]
    lo: int | None = None
    hi: int | None = None
    grid: Interval | None = None


@dataclass
class _Cover:
    label: str
    key: tuple[Any, ...]
    span: Interval | None  # value-space bounds fetched; None for a lookup id


@dataclass
class _Task:
    params: dict[str, Any]
    covers: list[_Cover] = field(default_factory=list)


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, _LIST_TYPES):
        return list(value)
    return None


# ---------------------------------------------------------------------- requests


def _valid_names(cache: SqlCache) -> list[str]:
    if cache.mode == "range":
        return [*cache.key_columns, cache.start_name, cache.end_name]
    return list(cache.key_columns)


def _normalize(cache: SqlCache, params: Mapping[str, Any], *, partial: bool = False) -> _Request:
    valid = _valid_names(cache)
    for name in params:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CacheKeyError(
                f"unknown parameter {name!r} for table {cache.table_name!r}; "
                f"valid ones are {valid}{hint}",
                key=name,
            )
    key_lists: list[list[Any]] = []
    public: dict[str, Any] = {}
    for col in cache.key_columns:
        if col not in params:
            if partial:
                key_lists.append([])
                continue
            raise CacheKeyError(
                f"missing key parameter {col!r} for table {cache.table_name!r}", key=col
            )
        raw = params[col]
        values = _as_list(raw)
        if values is None:
            bound = [cache.schema.bind_key(col, raw)]
            public[col] = bound[0]
        else:
            bound = list(dict.fromkeys(cache.schema.bind_key(col, v) for v in values))
            public[col] = bound
        key_lists.append(bound)
    keys = [] if partial else list(itertools.product(*key_lists))
    req = _Request(
        params=public,
        key_lists=key_lists,
        keys=keys,
        labels=[TableSchema.label(k) for k in keys],
    )
    if cache.mode == "range":
        start = params.get(cache.start_name)
        end = params.get(cache.end_name)
        if start is None and not partial:
            raise CacheKeyError(
                f"missing {cache.start_name!r} for table {cache.table_name!r}",
                key=cache.start_name,
            )
        if end is None and not partial and cache.sequence:
            raise CacheKeyError(
                f"missing {cache.end_name!r} for table {cache.table_name!r}", key=cache.end_name
            )
        if start is not None or end is not None or not partial:
            lo = _position(cache, start, cache.start_name) if start is not None else None
            if end is None and not cache.sequence and not partial:
                end = pd.Timestamp(cache._clock(), unit="s", tz="UTC")
            hi = _position(cache, end, cache.end_name) if end is not None else None
            if lo is not None and hi is not None and lo > hi:
                raise CacheKeyError(
                    f"{cache.start_name}={start!r} is after {cache.end_name}={end!r}",
                    key=cache.start_name,
                )
            req.lo, req.hi = lo, hi
            if lo is not None:
                public[cache.start_name] = _value_param(cache, lo)
            if hi is not None:
                public[cache.end_name] = _value_param(cache, hi)
            if lo is not None and hi is not None:
                req.grid = _gaps.touched(lo, hi, cache.step)
    return req


def _position(cache: SqlCache, value: Any, name: str) -> int:
    if cache.sequence:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise CacheKeyError(f"{name}={value!r} must be an integer", key=name)
        return int(value)
    return timestamp_to_us(to_utc(value, name=name))


def _value_param(cache: SqlCache, value: int) -> Any:
    return value if cache.sequence else us_to_timestamp(value)


# ---------------------------------------------------------------------- planning


def _plan(
    cache: SqlCache, conn: sa.Connection, req: _Request, now: float
) -> tuple[list[_Task], Literal["hit", "partial", "miss"]]:
    """The fetches the ledger says ``req`` needs, and how much was already covered."""
    if not req.keys:
        return [], "hit"
    if cache.mode == "lookup":
        valid = {e.key for e in cache.ledger.entries(conn, req.labels) if e.valid(now)}
        missing = [
            (k, lab) for k, lab in zip(req.keys, req.labels, strict=True) if lab not in valid
        ]
        if not missing:
            return [], "hit"
        kind: Literal["hit", "partial", "miss"] = (
            "miss" if len(missing) == len(req.keys) else "partial"
        )
        return _lookup_tasks(cache, missing), kind
    if req.grid is None:
        return [], "hit"
    assert req.lo is not None and req.hi is not None
    covered: dict[str, list[Interval]] = {lab: [] for lab in req.labels}
    for e in cache.ledger.entries(conn, req.labels, req.lo, req.hi):
        if e.valid(now):
            grid = _gaps.within(e.lo, e.hi, cache.step)
            if grid is not None:
                covered[e.key].append(grid)
    tasks: list[_Task] = []
    requested = 0
    missing_points = 0
    for key, label in zip(req.keys, req.labels, strict=True):
        gaps = _gaps.subtract(req.grid, covered[label])
        requested += req.grid[1] - req.grid[0] + 1
        missing_points += sum(hi - lo + 1 for lo, hi in gaps)
        for g_lo, g_hi in _gaps.cap_fetches(gaps, cache.max_fetches):
            # Whole buckets: a row anywhere in them is fetched (and replaced) with them.
            span = _gaps.span_of(g_lo, g_hi, cache.step)
            params = dict(zip(cache.key_columns, key, strict=True))
            params[cache.start_name] = _value_param(cache, span[0])
            params[cache.end_name] = _value_param(cache, span[1])
            tasks.append(_Task(params, [_Cover(label, key, span)]))
    if not tasks:
        return [], "hit"
    return tasks, "miss" if missing_points == requested else "partial"


def _lookup_tasks(cache: SqlCache, missing: list[tuple[tuple[Any, ...], str]]) -> list[_Task]:
    if cache.batch_fetch:
        # In batches: a source query binds each id (PostgreSQL takes 65,535 at most).
        tasks = []
        for part in chunks(missing, IN_CHUNK):
            params = {col: [k[i] for k, _ in part] for i, col in enumerate(cache.key_columns)}
            tasks.append(_Task(params, [_Cover(lab, k, None) for k, lab in part]))
        return tasks
    return [
        _Task(dict(zip(cache.key_columns, k, strict=True)), [_Cover(lab, k, None)])
        for k, lab in missing
    ]


def _tasks_from_detector(cache: SqlCache, fetches: Any) -> list[_Task]:
    if not isinstance(fetches, list | tuple) or not all(isinstance(f, Mapping) for f in fetches):
        raise CacheConfigError(
            f"gap_detector returned {fetches!r}; it must return a list of dicts, one "
            "per fetcher call (an empty list when nothing is missing)"
        )
    tasks = []
    for raw in fetches:
        params = dict(raw)
        tasks.append(_Task(params, _covers_of(cache, params)))
    return tasks


def _covers_of(cache: SqlCache, params: dict[str, Any]) -> list[_Cover]:
    """What a detector-made fetch covers, when its parameters say so plainly."""
    try:
        if not all(col in params for col in cache.key_columns):
            return []
        if cache.mode == "lookup":
            lists = [_as_list(params[c]) for c in cache.key_columns]
            if all(v is None for v in lists):
                cols = [[params[c]] for c in cache.key_columns]
            elif (
                all(v is not None for v in lists)
                and len({len(v) for v in lists if v is not None}) == 1
            ):
                cols = [v for v in lists if v is not None]
            else:
                return []
            keys = [
                tuple(
                    cache.schema.bind_key(c, v) for c, v in zip(cache.key_columns, row, strict=True)
                )
                for row in zip(*cols, strict=True)
            ]
            return [_Cover(TableSchema.label(k), k, None) for k in keys]
        if any(_as_list(params[c]) is not None for c in cache.key_columns):
            return []
        if cache.start_name not in params or cache.end_name not in params:
            return []
        key = tuple(cache.schema.bind_key(c, params[c]) for c in cache.key_columns)
        lo = _position(cache, params[cache.start_name], cache.start_name)
        hi = _position(cache, params[cache.end_name], cache.end_name)
    except CacheKeyError:
        return []
    if lo > hi:
        return []
    return [_Cover(TableSchema.label(key), key, (lo, hi))]
