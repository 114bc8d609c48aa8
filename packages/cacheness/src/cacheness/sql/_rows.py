"""The cached rows and their coverage: fetched and stored, read, invalidated, expired.

Rows and the ledger entries that cover them are written and deleted in one
transaction, so the ledger never claims rows that are not there. Like
``_request``, these are functions of the cache, reading its settings (TTLs,
the fetcher) when called.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd  # type: ignore[import-untyped, unused-ignore]
import sqlalchemy as sa

from cacheness.sql import _gaps
from cacheness.sql._database import _db
from cacheness.sql._gaps import Interval
from cacheness.sql._ledger import Entry, chunks
from cacheness.sql._request import IN_CHUNK, _Cover, _normalize, _Request, _Task
from cacheness.sql._upsert import upsert

if TYPE_CHECKING:
    from cacheness.sql._cache import SqlCache

__all__: list[str] = []

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- fetch + store


def _run(cache: SqlCache, tasks: list[_Task]) -> None:
    """Call the fetcher for every task, then store everything, or nothing."""
    frames = []
    fetched_rows = 0
    for task in tasks:
        logger.debug("fetching %s for %s", task.params, cache.table_name)
        frame = cache.data_fetcher(**task.params)
        cache._counters.add(fetches=1)
        fetched_rows += len(frame) if isinstance(frame, pd.DataFrame) else 0
        frames.append(frame)
    cache._counters.add(rows_fetched=fetched_rows)
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    pk = cache.schema.primary_key
    for frame in frames:
        for row in cache.schema.frame_to_rows(frame):
            rows[tuple(row[c] for c in pk)] = row
    now = cache._clock()
    covers = [cover for task in tasks for cover in task.covers]
    # Ids of a lookup go in batches: a statement per id was ~4 per id (40,000 ids, 10 s).
    ids = [cover for cover in covers if cover.span is None]
    spans = [cover for cover in covers if cover.span is not None]
    with _db(cache, "store fetched rows"), cache.engine.begin() as conn:
        for cover in spans:
            _delete_rows(cache, conn, cover.key, cover.span)
        _delete_keys(cache, conn, [cover.key for cover in ids])
        upsert(conn, cache.table, list(rows.values()))
        for cover in spans:
            _record(cache, conn, cover, now)
        if ids:
            labels = [cover.label for cover in ids]
            cache.ledger.record_keys(conn, labels, now, _expiry(now, cache.ttl_seconds))
    logger.debug(
        "stored %d row(s) from %d fetch(es) in %s", len(rows), len(tasks), cache.table_name
    )


def _record(cache: SqlCache, conn: sa.Connection, cover: _Cover, now: float) -> None:
    assert cover.span is not None  # lookups: Ledger.record_keys
    lo, hi = cover.span
    first_open: int | None = None
    if not cache.sequence and cache.open_ttl_seconds is not None:
        # The increment holding "now" (and anything after it) can still change.
        first_open = (_now_us(now) // cache.step) * cache.step
    closed, opened = _gaps.split_open((lo, hi), first_open)
    if closed is not None:
        cache.ledger.record(conn, cover.label, closed, now, _expiry(now, cache.ttl_seconds))
    if opened is not None:
        cache.ledger.record(conn, cover.label, opened, now, _expiry(now, cache.open_ttl_seconds))


def _now_us(now: float) -> int:
    return int(now * 1_000_000)


def _expiry(now: float, ttl: float | None) -> float | None:
    return None if ttl is None else now + ttl


def _key_filter(cache: SqlCache, key: Sequence[Any]) -> list[Any]:
    return [cache.table.c[c] == v for c, v in zip(cache.key_columns, key, strict=True)]


def _delete_rows(
    cache: SqlCache, conn: sa.Connection, key: Sequence[Any], span: Interval | None
) -> int:
    """Delete the rows a refetch replaces, so rows the source dropped do not linger."""
    where = _key_filter(cache, key)
    if span is not None and cache.time_column is not None:
        col = cache.table.c[cache.time_column]
        where.append(col >= _bind_position(cache, span[0]))
        where.append(col <= _bind_position(cache, span[1]))
    return conn.execute(cache.table.delete().where(*where)).rowcount or 0


def _delete_keys(cache: SqlCache, conn: sa.Connection, keys: list[tuple[Any, ...]]) -> None:
    """Delete every row of these keys (a lookup's refetched ids), in batches."""
    if len(cache.key_columns) != 1:
        for key in keys:
            _delete_rows(cache, conn, key, None)
        return
    col = cache.table.c[cache.key_columns[0]]
    for part in chunks([key[0] for key in keys], IN_CHUNK):
        conn.execute(cache.table.delete().where(col.in_(part)))


def _bind_position(cache: SqlCache, value: int) -> Any:
    return value if cache.sequence else cache.schema.bind_instant(value)


# ---------------------------------------------------------------------- reading


def _read(cache: SqlCache, conn: sa.Connection, req: _Request) -> pd.DataFrame:
    if not req.keys:
        return cache.schema.empty_frame()
    lists = list(req.key_lists)
    big = max(range(len(lists)), key=lambda i: len(lists[i]), default=None)
    if big is None or len(lists[big]) <= IN_CHUNK:
        return _read_some(cache, conn, req, lists)
    # A statement takes at most 65,535 bound values on PostgreSQL, 32,766 on SQLite.
    frames = [
        _read_some(cache, conn, req, [*lists[:big], list(part), *lists[big + 1 :]])
        for part in chunks(lists[big], IN_CHUNK)
    ]
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(cache.schema.primary_key, kind="stable", ignore_index=True)


def _read_some(
    cache: SqlCache, conn: sa.Connection, req: _Request, key_lists: list[list[Any]]
) -> pd.DataFrame:
    t = cache.table
    where = []
    for col, values in zip(cache.key_columns, key_lists, strict=True):
        where.append(t.c[col] == values[0] if len(values) == 1 else t.c[col].in_(values))
    if cache.mode == "range":
        assert cache.time_column is not None and req.lo is not None and req.hi is not None
        tc = t.c[cache.time_column]
        where.append(tc >= _bind_position(cache, req.lo))
        where.append(tc <= _bind_position(cache, req.hi))
    pk = [t.c[c] for c in cache.schema.primary_key]
    stmt = sa.select(*t.c).where(*where).order_by(*pk)
    # Tens of thousands of fresh row tuples set off the cyclic GC again
    # and again (it doubled the time of a 36,500-row read); none of them
    # can form a cycle, so collection waits until the frame is built.
    paused = gc.isenabled()
    gc.disable()
    try:
        result = conn.execute(stmt)
        if cache._raw_rows:
            # No column needs a result processor here: skip Row objects.
            rows = result.cursor.fetchall()
            result.close()
        else:
            rows = result.all()
        frame = cache.schema.rows_to_frame(rows)
    finally:
        if paused:
            gc.enable()
    if len(req.keys) > 1 and len(frame) > 1 and cache.engine.dialect.name != "sqlite":
        # The database orders strings by its collation (SQLite's BINARY is
        # code point order, like Python's); sort so every backend agrees.
        frame = frame.sort_values(cache.schema.primary_key, kind="stable", ignore_index=True)
    return frame


def _has_processor(type_: Any, dialect: sa.Dialect) -> bool:
    try:
        return type_.dialect_impl(dialect).result_processor(dialect, None) is not None
    except (TypeError, KeyError, ValueError):  # a processor that needs the column's type code
        return True


# ---------------------------------------------------------------------- maintenance


def _invalidate(cache: SqlCache, keys: Mapping[str, Any]) -> int:
    req = _normalize(cache, keys, partial=True)
    t = cache.table
    given = [(col, v) for col, v in zip(cache.key_columns, req.key_lists, strict=True) if v]
    where = [t.c[col].in_(values) for col, values in given]
    lo, hi = req.lo, req.hi
    if cache.mode == "range" and (lo is not None or hi is not None):
        tc = t.c[cache.time_column]  # type: ignore[index]
        if lo is not None:
            where.append(tc >= _bind_position(cache, lo))
        if hi is not None:
            where.append(tc <= _bind_position(cache, hi))
    wanted = [set(map(_json_key, v)) if v else None for v in req.key_lists]
    big = max(range(len(given)), key=lambda i: len(given[i][1]), default=None)
    with _db(cache, "invalidate cached rows"), cache.engine.begin() as conn:
        if big is None or len(given[big][1]) <= IN_CHUNK:
            deleted = conn.execute(t.delete().where(*where)).rowcount or 0
        else:
            col, values = given[big]
            deleted = 0
            for part in chunks(values, IN_CHUNK):
                some = [*where[:big], t.c[col].in_(part), *where[big + 1 :]]
                deleted += conn.execute(t.delete().where(*some)).rowcount or 0
        labels = {e.key for e in cache.ledger.entries(conn)}
        for label in labels:
            values = json.loads(label)
            if all(w is None or _json_key(v) in w for w, v in zip(wanted, values, strict=True)):
                if lo is None and hi is None:
                    cache.ledger.forget(conn, label, None, None)
                else:
                    cache.ledger.forget(
                        conn,
                        label,
                        lo if lo is not None else -(2**62),
                        hi if hi is not None else 2**62,
                    )
    logger.debug("invalidated %d row(s) of %s", deleted, cache.table_name)
    return deleted


def _json_key(value: Any) -> str:
    return json.dumps(value, default=str)


def _cleanup_expired(cache: SqlCache) -> int:
    now = cache._clock()
    with _db(cache, "read the coverage ledger"), cache.engine.connect() as conn:
        labels = sorted({e.key for e in cache.ledger.entries(conn) if not e.valid(now)})
    if not labels:
        return 0
    # Under the fetch lease of those keys, read again: a refetch that committed since
    # the read above has valid entries whose rows must stay, and none can start now.
    with (
        cache._leased(labels),
        _db(cache, "clean up expired entries"),
        cache.engine.begin() as conn,
    ):
        entries = cache.ledger.entries(conn, labels)
        expired = [e for e in entries if not e.valid(now)]
        if not expired:
            return 0
        valid: dict[str, list[Interval]] = {}
        for e in entries:
            if e.valid(now):
                valid.setdefault(e.key, []).append((e.lo, e.hi))
        for e in expired:
            key = _key_of(cache, e)
            if cache.mode == "lookup":
                if e.key not in valid:
                    _delete_rows(cache, conn, key, None)
                continue
            for part in _gaps.subtract((e.lo, e.hi), valid.get(e.key, [])):
                _delete_rows(cache, conn, key, part)
        cache.ledger.delete_ids(conn, [e.id for e in expired])
    logger.debug("removed %d expired coverage entries of %s", len(expired), cache.table_name)
    return len(expired)


def _key_of(cache: SqlCache, entry: Entry) -> tuple[Any, ...]:
    values = json.loads(entry.key)
    return tuple(
        cache.schema.bind_key(c, v) for c, v in zip(cache.key_columns, values, strict=True)
    )
