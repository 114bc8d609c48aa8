"""``SqlCache``: a local SQL table in front of a slow source, fetching only what is missing.

One request goes: normalise the parameters; read the coverage ledger for
the requested keys; subtract the unexpired coverage from the requested
range on the increment grid; if nothing is missing, read the rows and
return. Otherwise take the lease on the keys with gaps, re-read the ledger
(another process may have fetched meanwhile), call the fetcher once per
remaining gap, check every frame against the table, and write rows and
ledger in one transaction. A fetcher that raises, or a frame that does not
fit, leaves the cache exactly as it was.
"""

from __future__ import annotations

import difflib
import gc
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal

import numpy as np
import pandas as pd  # type: ignore[import-untyped, unused-ignore]
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from cacheness.sql import _gaps
from cacheness.sql._fetchers import accepts_list, make_engine
from cacheness.sql._gaps import Interval
from cacheness.sql._ledger import Entry, Ledger
from cacheness.sql._schema import TableSchema, build_specs
from cacheness.sql._time import (
    increment_to_us,
    timestamp_to_us,
    to_utc,
    us_to_timestamp,
)
from cacheness.sql._upsert import upsert
from cacheness.storage.errors import CacheBackendError, CacheConfigError, CacheKeyError

__all__ = ["GapDetector", "SqlCache"]

logger = logging.getLogger(__name__)

#: ``gap_detector(query_params, cached_data, cache) -> list of fetcher keyword dicts``
GapDetector = Callable[[dict[str, Any], pd.DataFrame, "SqlCache"], list[dict[str, Any]]]

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
_LOOKUP_LEASE = "*"
_LIST_TYPES = (list, tuple, set, frozenset, np.ndarray, pd.Index, pd.Series)
_COUNTER_OF = {"hit": "hits", "partial": "partial_hits", "miss": "misses"}


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


@dataclass
class _Counters:
    fetches: int = 0
    rows_fetched: int = 0
    hits: int = 0
    partial_hits: int = 0
    misses: int = 0


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, _LIST_TYPES):
        return list(value)
    return None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # WAL lets readers go on while one process writes fetched rows.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.fetchall()
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


class SqlCache:
    """Cache rows of a slow source (an API, a remote database) in a local SQL table.

    Build one with :meth:`for_timeseries`, :meth:`for_realtime_timeseries`,
    :meth:`for_lookup_table` or :meth:`for_analytics_table`; then
    :meth:`get_data` returns the requested rows, fetching only what the
    coverage ledger says is missing or expired.

    Time series (``time_column`` given) fetch ranges: the fetcher receives the
    key columns and ``start_date``/``end_date`` (inclusive UTC
    ``pandas.Timestamp``), or ``start``/``end`` for integer sequences
    (``ordered_increment``). Lookups (``primary_keys`` given) fetch ids.
    """

    def __init__(
        self,
        db_url: str | os.PathLike[str] | sa.Engine,
        table_name: str,
        *,
        data_fetcher: Callable[..., Any],
        columns: Mapping[str, Any] | None = None,
        key_columns: Sequence[str] = (),
        time_column: str | None = None,
        time_increment: timedelta | pd.Timedelta | str | None = None,
        ordered_increment: int | None = None,
        primary_keys: Sequence[str] | None = None,
        ttl_seconds: float | None = 86400,
        open_ttl_seconds: float | None = None,
        gap_detector: GapDetector | None = None,
        max_fetches: int = 10,
        batch_fetch: bool | None = None,
        lease_seconds: float = 120.0,
        engine_kwargs: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(table_name, str) or not _TABLE_NAME.match(table_name):
            raise CacheConfigError(
                f"table_name={table_name!r} must be 1-40 letters, digits or underscores, "
                "not starting with a digit"
            )
        if not callable(data_fetcher):
            raise CacheConfigError(f"data_fetcher={data_fetcher!r} is not callable")
        if gap_detector is not None and not callable(gap_detector):
            raise CacheConfigError(f"gap_detector={gap_detector!r} is not callable")
        for name, ttl in (("ttl_seconds", ttl_seconds), ("open_ttl_seconds", open_ttl_seconds)):
            if ttl is not None and (isinstance(ttl, bool) or not ttl >= 0):
                raise CacheConfigError(f"{name}={ttl!r} must be None (never expire) or >= 0")
        if isinstance(max_fetches, bool) or not isinstance(max_fetches, int) or max_fetches < 1:
            raise CacheConfigError(f"max_fetches={max_fetches!r} must be an integer >= 1")
        if not lease_seconds > 0:
            raise CacheConfigError(f"lease_seconds={lease_seconds!r} must be positive")
        declared = dict(columns or {})

        self.table_name = table_name
        self.data_fetcher = data_fetcher
        self.gap_detector = gap_detector
        self.ttl_seconds = None if ttl_seconds is None else float(ttl_seconds)
        self.open_ttl_seconds = None if open_ttl_seconds is None else float(open_ttl_seconds)
        self.max_fetches = max_fetches
        self.lease_seconds = float(lease_seconds)
        self._clock = clock
        self._counters = _Counters()
        self._lock = threading.Lock()

        self.mode: Literal["range", "lookup"]
        self.time_column = time_column
        self.sequence = ordered_increment is not None
        if time_column is not None:
            if primary_keys is not None:
                raise CacheConfigError(
                    "give either time_column= (a time series) or primary_keys= (a lookup "
                    "table), not both"
                )
            self.mode = "range"
            self.key_columns = list(key_columns)
            if time_increment is not None and ordered_increment is not None:
                raise CacheConfigError(
                    "time_increment= is for time columns and ordered_increment= for integer "
                    "sequences; give one of them"
                )
            if ordered_increment is not None:
                if (
                    isinstance(ordered_increment, bool)
                    or not isinstance(ordered_increment, int)
                    or ordered_increment < 1
                ):
                    raise CacheConfigError(
                        f"ordered_increment={ordered_increment!r} must be a positive integer"
                    )
                self.step = ordered_increment
                self.start_name, self.end_name = "start", "end"
            else:
                # Without an increment the grid is the microsecond: coverage is
                # then continuous and gaps start just after what is cached.
                self.step = 1 if time_increment is None else increment_to_us(time_increment)
                self.start_name, self.end_name = "start_date", "end_date"
            reserved = {self.start_name, self.end_name, time_column}
            clash = reserved & set(self.key_columns)
            if clash:
                raise CacheConfigError(
                    f"key_columns {sorted(clash)} clash with the time parameters "
                    f"{sorted(reserved)}; rename the column"
                )
            key_names = self.key_columns
        else:
            if not primary_keys:
                raise CacheConfigError(
                    "a SqlCache needs time_column= (time series, see for_timeseries) or "
                    "primary_keys= (lookup table, see for_lookup_table)"
                )
            if key_columns:
                raise CacheConfigError(
                    "key_columns= belongs to time series; a lookup table names its ids "
                    "with primary_keys="
                )
            self.mode = "lookup"
            self.key_columns = list(primary_keys)
            self.step = 1
            self.start_name = self.end_name = ""
            key_names = self.key_columns
        if len(set(key_names)) != len(key_names) or not all(
            isinstance(n, str) and n for n in key_names
        ):
            raise CacheConfigError(f"key column names {key_names!r} must be distinct strings")
        specs = build_specs(
            table_name=table_name,
            key_names=key_names,
            time_column=time_column,
            sequence=self.sequence,
            declared=declared,
        )

        if isinstance(db_url, sa.Engine):
            self.engine = db_url
            self._owns_engine = False
        else:
            self.engine = self._make_engine(os.fspath(db_url), engine_kwargs)
            self._owns_engine = True
        self.schema = TableSchema(
            table_name, specs, native_instants=self.engine.dialect.name == "postgresql"
        )
        self._metadata = sa.MetaData()
        self.table = self.schema.build_table(self._metadata)
        self.ledger = Ledger(self._metadata, table_name)
        dialect = self.engine.dialect
        self._raw_rows = not any(_has_processor(c.type, dialect) for c in self.table.columns)
        self.batch_fetch = (
            accepts_list(data_fetcher, self.key_columns)
            if batch_fetch is None and self.mode == "lookup"
            else bool(batch_fetch)
        )
        try:
            self._create_tables()
        except BaseException:
            if self._owns_engine:
                self.engine.dispose()
            raise

    # ------------------------------------------------------------------ builders

    @classmethod
    def for_timeseries(
        cls,
        db_url: str | os.PathLike[str] | sa.Engine,
        table_name: str,
        *,
        data_fetcher: Callable[..., Any],
        key_columns: Sequence[str] = (),
        time_column: str = "timestamp",
        time_increment: timedelta | pd.Timedelta | str | None = None,
        ordered_increment: int | None = None,
        ttl_seconds: float | None = 86400,
        open_ttl_seconds: float | None = None,
        gap_detector: GapDetector | None = None,
        max_fetches: int = 10,
        columns: Mapping[str, Any] | None = None,
        lease_seconds: float = 120.0,
        engine_kwargs: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        **column_types: Any,
    ) -> SqlCache:
        """A time series (or integer sequence) cache keyed by ``key_columns`` and time.

        ``data_fetcher(**keys, start_date=..., end_date=...)`` returns a
        DataFrame with the key columns, the time column and the declared
        columns (given as keywords, e.g. ``price=Float``, or as ``columns=``).
        With ``ordered_increment=N`` the time column holds integers and the
        fetcher gets ``start``/``end``. ``open_ttl_seconds`` (default: the
        same as ``ttl_seconds``) applies to the part of a fetch at or after
        the current increment, which may still change.
        """
        return cls(
            db_url,
            table_name,
            data_fetcher=data_fetcher,
            columns=_merge_columns(cls.for_timeseries, columns, column_types),
            key_columns=key_columns,
            time_column=time_column,
            time_increment=time_increment,
            ordered_increment=ordered_increment,
            ttl_seconds=ttl_seconds,
            open_ttl_seconds=open_ttl_seconds,
            gap_detector=gap_detector,
            max_fetches=max_fetches,
            lease_seconds=lease_seconds,
            engine_kwargs=engine_kwargs,
            clock=clock,
        )

    @classmethod
    def for_realtime_timeseries(
        cls,
        db_url: str | os.PathLike[str] | sa.Engine,
        table_name: str,
        *,
        data_fetcher: Callable[..., Any],
        key_columns: Sequence[str] = (),
        time_column: str = "timestamp",
        time_increment: timedelta | pd.Timedelta | str | None = None,
        ordered_increment: int | None = None,
        ttl_seconds: float | None = 3600,
        open_ttl_seconds: float | None = 60,
        gap_detector: GapDetector | None = None,
        max_fetches: int = 10,
        columns: Mapping[str, Any] | None = None,
        lease_seconds: float = 120.0,
        engine_kwargs: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        **column_types: Any,
    ) -> SqlCache:
        """:meth:`for_timeseries` for data still arriving: one hour TTL, and the
        open end of a range (the current increment and later) is refetched
        after one minute."""
        return cls.for_timeseries(
            db_url,
            table_name,
            data_fetcher=data_fetcher,
            columns=_merge_columns(cls.for_realtime_timeseries, columns, column_types),
            key_columns=key_columns,
            time_column=time_column,
            time_increment=time_increment,
            ordered_increment=ordered_increment,
            ttl_seconds=ttl_seconds,
            open_ttl_seconds=open_ttl_seconds,
            gap_detector=gap_detector,
            max_fetches=max_fetches,
            lease_seconds=lease_seconds,
            engine_kwargs=engine_kwargs,
            clock=clock,
        )

    @classmethod
    def for_lookup_table(
        cls,
        db_url: str | os.PathLike[str] | sa.Engine,
        table_name: str,
        *,
        primary_keys: Sequence[str],
        data_fetcher: Callable[..., Any],
        ttl_seconds: float | None = 3600,
        batch_fetch: bool | None = None,
        gap_detector: GapDetector | None = None,
        columns: Mapping[str, Any] | None = None,
        lease_seconds: float = 120.0,
        engine_kwargs: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        **column_types: Any,
    ) -> SqlCache:
        """A cache of rows by id: ``get_data(user_id=[1, 2, 3])`` fetches only the ids
        not cached (and unexpired).

        With ``batch_fetch=True`` (the default when the fetcher's id
        parameter is annotated as a list) the fetcher gets all missing ids in
        one call; otherwise it is called once per id.
        """
        return cls(
            db_url,
            table_name,
            data_fetcher=data_fetcher,
            columns=_merge_columns(cls.for_lookup_table, columns, column_types),
            primary_keys=primary_keys,
            ttl_seconds=ttl_seconds,
            batch_fetch=batch_fetch,
            gap_detector=gap_detector,
            lease_seconds=lease_seconds,
            engine_kwargs=engine_kwargs,
            clock=clock,
        )

    @classmethod
    def for_analytics_table(
        cls,
        db_url: str | os.PathLike[str] | sa.Engine,
        table_name: str,
        *,
        primary_keys: Sequence[str],
        data_fetcher: Callable[..., Any],
        ttl_seconds: float | None = 86400,
        batch_fetch: bool | None = None,
        gap_detector: GapDetector | None = None,
        columns: Mapping[str, Any] | None = None,
        lease_seconds: float = 120.0,
        engine_kwargs: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        **column_types: Any,
    ) -> SqlCache:
        """:meth:`for_lookup_table` for aggregates that are costly to compute and
        change slowly (e.g. keyed by region and month): one day TTL."""
        return cls(
            db_url,
            table_name,
            data_fetcher=data_fetcher,
            columns=_merge_columns(cls.for_analytics_table, columns, column_types),
            primary_keys=primary_keys,
            ttl_seconds=ttl_seconds,
            batch_fetch=batch_fetch,
            gap_detector=gap_detector,
            lease_seconds=lease_seconds,
            engine_kwargs=engine_kwargs,
            clock=clock,
        )

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _make_engine(url: str, engine_kwargs: Mapping[str, Any] | None) -> sa.Engine:
        if "://" not in url:
            url = "sqlite:///" + os.path.abspath(url)
        kwargs = dict(engine_kwargs or {})
        parsed = sa.make_url(url) if "://" in url else None
        if parsed is not None and parsed.get_backend_name() == "sqlite":
            memory = parsed.database in (None, "", ":memory:")
            connect_args = dict(kwargs.pop("connect_args", {}))
            if memory:
                # One shared connection, or each thread would see its own empty database.
                connect_args.setdefault("check_same_thread", False)
                kwargs.setdefault("poolclass", StaticPool)
            else:
                connect_args.setdefault("timeout", 60)
            kwargs["connect_args"] = connect_args
            engine = make_engine(url, kwargs)
            if not memory:
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return make_engine(url, kwargs)

    def _create_tables(self) -> None:
        tables = [self.table, self.ledger.coverage, self.ledger.leases]
        with self._db("create the cache tables"), self.engine.begin() as conn:
            for table in tables:
                conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
                for index in table.indexes:
                    conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))
            existing = {c["name"] for c in sa.inspect(conn).get_columns(self.table_name)}
        if existing != set(self.schema.names):
            raise CacheConfigError(
                f"table {self.table_name!r} already exists with columns {sorted(existing)}, "
                f"but this cache declares {sorted(self.schema.names)}; use another "
                "table_name or drop the old table"
            )

    @contextmanager
    def _db(self, action: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            raise CacheBackendError(
                f"could not {action} for table {self.table_name!r}: "
                f"{exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}",
                key=self.table_name,
                backend=self.engine.dialect.name,
            ) from exc

    # ------------------------------------------------------------------ requests

    def _valid_names(self) -> list[str]:
        if self.mode == "range":
            return [*self.key_columns, self.start_name, self.end_name]
        return list(self.key_columns)

    def _normalize(self, params: Mapping[str, Any], *, partial: bool = False) -> _Request:
        valid = self._valid_names()
        for name in params:
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise CacheKeyError(
                    f"unknown parameter {name!r} for table {self.table_name!r}; "
                    f"valid ones are {valid}{hint}",
                    key=name,
                )
        key_lists: list[list[Any]] = []
        public: dict[str, Any] = {}
        for col in self.key_columns:
            if col not in params:
                if partial:
                    key_lists.append([])
                    continue
                raise CacheKeyError(
                    f"missing key parameter {col!r} for table {self.table_name!r}", key=col
                )
            raw = params[col]
            values = _as_list(raw)
            if values is None:
                bound = [self.schema.bind_key(col, raw)]
                public[col] = bound[0]
            else:
                bound = list(dict.fromkeys(self.schema.bind_key(col, v) for v in values))
                public[col] = bound
            key_lists.append(bound)
        keys = [] if partial else list(itertools.product(*key_lists))
        req = _Request(
            params=public,
            key_lists=key_lists,
            keys=keys,
            labels=[TableSchema.label(k) for k in keys],
        )
        if self.mode == "range":
            start = params.get(self.start_name)
            end = params.get(self.end_name)
            if start is None and not partial:
                raise CacheKeyError(
                    f"missing {self.start_name!r} for table {self.table_name!r}",
                    key=self.start_name,
                )
            if end is None and not partial and self.sequence:
                raise CacheKeyError(
                    f"missing {self.end_name!r} for table {self.table_name!r}", key=self.end_name
                )
            if start is not None or end is not None or not partial:
                lo = self._position(start, self.start_name) if start is not None else None
                if end is None and not self.sequence and not partial:
                    end = pd.Timestamp(self._clock(), unit="s", tz="UTC")
                hi = self._position(end, self.end_name) if end is not None else None
                if lo is not None and hi is not None and lo > hi:
                    raise CacheKeyError(
                        f"{self.start_name}={start!r} is after {self.end_name}={end!r}",
                        key=self.start_name,
                    )
                req.lo, req.hi = lo, hi
                if lo is not None:
                    public[self.start_name] = self._value_param(lo)
                if hi is not None:
                    public[self.end_name] = self._value_param(hi)
                if lo is not None and hi is not None:
                    req.grid = _gaps.to_grid(lo, hi, self.step)
        return req

    def _position(self, value: Any, name: str) -> int:
        if self.sequence:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise CacheKeyError(f"{name}={value!r} must be an integer", key=name)
            return int(value)
        return timestamp_to_us(to_utc(value, name=name))

    def _value_param(self, value: int) -> Any:
        return value if self.sequence else us_to_timestamp(value)

    # ------------------------------------------------------------------ planning

    def _now_us(self, now: float) -> int:
        return int(now * 1_000_000)

    def _plan(
        self, conn: sa.Connection, req: _Request, now: float
    ) -> tuple[list[_Task], Literal["hit", "partial", "miss"]]:
        """The fetches the ledger says ``req`` needs, and how much was already covered."""
        if not req.keys:
            return [], "hit"
        if self.mode == "lookup":
            valid = {e.key for e in self.ledger.entries(conn, req.labels) if e.valid(now)}
            missing = [
                (k, lab) for k, lab in zip(req.keys, req.labels, strict=True) if lab not in valid
            ]
            if not missing:
                return [], "hit"
            kind: Literal["hit", "partial", "miss"] = (
                "miss" if len(missing) == len(req.keys) else "partial"
            )
            return self._lookup_tasks(missing), kind
        if req.grid is None:
            return [], "hit"
        assert req.lo is not None and req.hi is not None
        covered: dict[str, list[Interval]] = {lab: [] for lab in req.labels}
        for e in self.ledger.entries(conn, req.labels, req.lo, req.hi):
            if e.valid(now):
                grid = _gaps.to_grid(e.lo, e.hi, self.step)
                if grid is not None:
                    covered[e.key].append(grid)
        tasks: list[_Task] = []
        requested = 0
        missing_points = 0
        for key, label in zip(req.keys, req.labels, strict=True):
            gaps = _gaps.subtract(req.grid, covered[label])
            requested += req.grid[1] - req.grid[0] + 1
            missing_points += sum(hi - lo + 1 for lo, hi in gaps)
            for g_lo, g_hi in _gaps.cap_fetches(gaps, self.max_fetches):
                span = (g_lo * self.step, g_hi * self.step)
                params = dict(zip(self.key_columns, key, strict=True))
                params[self.start_name] = self._value_param(span[0])
                params[self.end_name] = self._value_param(span[1])
                tasks.append(_Task(params, [_Cover(label, key, span)]))
        if not tasks:
            return [], "hit"
        return tasks, "miss" if missing_points == requested else "partial"

    def _lookup_tasks(self, missing: list[tuple[tuple[Any, ...], str]]) -> list[_Task]:
        if self.batch_fetch:
            params = {col: [k[i] for k, _ in missing] for i, col in enumerate(self.key_columns)}
            return [_Task(params, [_Cover(lab, k, None) for k, lab in missing])]
        return [
            _Task(dict(zip(self.key_columns, k, strict=True)), [_Cover(lab, k, None)])
            for k, lab in missing
        ]

    def find_gaps(self, **params: Any) -> list[dict[str, Any]]:
        """The fetcher calls the built-in detector would make for these ``get_data`` params.

        Nothing is fetched. A custom ``gap_detector`` can start from this and
        adjust it, e.g. ``cache.find_gaps(**query_params)``.
        """
        req = self._normalize(params)
        with self._db("read the coverage ledger"), self.engine.connect() as conn:
            tasks, _ = self._plan(conn, req, self._clock())
        return [t.params for t in tasks]

    def _tasks_from_detector(self, fetches: Any) -> list[_Task]:
        if not isinstance(fetches, list | tuple) or not all(
            isinstance(f, Mapping) for f in fetches
        ):
            raise CacheConfigError(
                f"gap_detector returned {fetches!r}; it must return a list of dicts, one "
                "per fetcher call (an empty list when nothing is missing)"
            )
        tasks = []
        for raw in fetches:
            params = dict(raw)
            tasks.append(_Task(params, self._covers_of(params)))
        return tasks

    def _covers_of(self, params: dict[str, Any]) -> list[_Cover]:
        """What a detector-made fetch covers, when its parameters say so plainly."""
        try:
            if not all(col in params for col in self.key_columns):
                return []
            if self.mode == "lookup":
                lists = [_as_list(params[c]) for c in self.key_columns]
                if all(v is None for v in lists):
                    cols = [[params[c]] for c in self.key_columns]
                elif (
                    all(v is not None for v in lists)
                    and len({len(v) for v in lists if v is not None}) == 1
                ):
                    cols = [v for v in lists if v is not None]
                else:
                    return []
                keys = [
                    tuple(
                        self.schema.bind_key(c, v)
                        for c, v in zip(self.key_columns, row, strict=True)
                    )
                    for row in zip(*cols, strict=True)
                ]
                return [_Cover(TableSchema.label(k), k, None) for k in keys]
            if any(_as_list(params[c]) is not None for c in self.key_columns):
                return []
            if self.start_name not in params or self.end_name not in params:
                return []
            key = tuple(self.schema.bind_key(c, params[c]) for c in self.key_columns)
            lo = self._position(params[self.start_name], self.start_name)
            hi = self._position(params[self.end_name], self.end_name)
        except CacheKeyError:
            return []
        if lo > hi:
            return []
        return [_Cover(TableSchema.label(key), key, (lo, hi))]

    # ------------------------------------------------------------------ get_data

    def get_data(self, **params: Any) -> pd.DataFrame:
        """The rows for ``params``, fetching only what is missing or expired.

        Time series: the key columns (a value or a list of values) and
        ``start_date``/``end_date`` (``start``/``end`` for integer
        sequences); lookups: the primary key columns (a value or a list).
        Returns the declared column types, sorted by key and time, exactly
        the requested range. A fetcher's exception propagates unchanged and
        leaves the cache as it was.
        """
        req = self._normalize(params)
        if self.gap_detector is not None:
            return self._get_with_detector(req)
        with self._db("read the cache"), self.engine.connect() as conn:
            tasks, kind = self._plan(conn, req, self._clock())
            if not tasks:
                self._count(hits=1)
                logger.debug("hit on %s for %d key(s)", self.table_name, len(req.keys))
                return self._read(conn, req)
        lease_keys = _LOOKUP_LEASE if self.mode == "lookup" else None
        with self._leased(
            [lease_keys] if lease_keys else [c.label for t in tasks for c in t.covers]
        ):
            with self._db("read the coverage ledger"), self.engine.connect() as conn:
                # Another process may have fetched while we waited for the lease.
                tasks, kind = self._plan(conn, req, self._clock())
            if tasks:
                self._run(tasks)
        self._count(**{_COUNTER_OF[kind]: 1})
        with self._db("read the cache"), self.engine.connect() as conn:
            return self._read(conn, req)

    def _get_with_detector(self, req: _Request) -> pd.DataFrame:
        assert self.gap_detector is not None
        with self._db("read the cache"), self.engine.connect() as conn:
            cached = self._read(conn, req)
        fetches = self.gap_detector(dict(req.params), cached, self)
        tasks = self._tasks_from_detector(fetches)
        if not tasks:
            self._count(hits=1)
            return cached
        labels = [c.label for t in tasks for c in t.covers] or req.labels
        with self._leased([_LOOKUP_LEASE] if self.mode == "lookup" else labels):
            self._run(tasks)
        self._count(partial_hits=1 if len(cached) else 0, misses=0 if len(cached) else 1)
        with self._db("read the cache"), self.engine.connect() as conn:
            return self._read(conn, req)

    @contextmanager
    def _leased(self, keys: Sequence[str]) -> Iterator[None]:
        with self._db("take the fetch lease"):
            token = self.ledger.acquire(self.engine, keys, self.lease_seconds)
        try:
            yield
        finally:
            with self._db("release the fetch lease"):
                self.ledger.release(self.engine, token)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._counters, name, getattr(self._counters, name) + delta)

    # ------------------------------------------------------------------ fetch + store

    def _run(self, tasks: list[_Task]) -> None:
        """Call the fetcher for every task, then store everything, or nothing."""
        frames = []
        fetched_rows = 0
        for task in tasks:
            logger.debug("fetching %s for %s", task.params, self.table_name)
            frame = self.data_fetcher(**task.params)
            self._count(fetches=1)
            fetched_rows += len(frame) if isinstance(frame, pd.DataFrame) else 0
            frames.append(frame)
        self._count(rows_fetched=fetched_rows)
        rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        pk = self.schema.primary_key
        for frame in frames:
            for row in self.schema.frame_to_rows(frame):
                rows[tuple(row[c] for c in pk)] = row
        now = self._clock()
        with self._db("store fetched rows"), self.engine.begin() as conn:
            for task in tasks:
                for cover in task.covers:
                    self._delete_rows(conn, cover.key, cover.span)
            upsert(conn, self.table, list(rows.values()))
            for task in tasks:
                for cover in task.covers:
                    self._record(conn, cover, now)
        logger.debug(
            "stored %d row(s) from %d fetch(es) in %s", len(rows), len(tasks), self.table_name
        )

    def _record(self, conn: sa.Connection, cover: _Cover, now: float) -> None:
        if cover.span is None:
            self.ledger.forget(conn, cover.label, None, None)
            self.ledger.record(conn, cover.label, (0, 0), now, self._expiry(now, self.ttl_seconds))
            return
        lo, hi = cover.span
        first_open: int | None = None
        if not self.sequence and self.open_ttl_seconds is not None:
            # The increment holding "now" (and anything after it) can still change.
            first_open = (self._now_us(now) // self.step) * self.step
        closed, opened = _gaps.split_open((lo, hi), first_open)
        if closed is not None:
            self.ledger.record(conn, cover.label, closed, now, self._expiry(now, self.ttl_seconds))
        if opened is not None:
            self.ledger.record(
                conn, cover.label, opened, now, self._expiry(now, self.open_ttl_seconds)
            )

    @staticmethod
    def _expiry(now: float, ttl: float | None) -> float | None:
        return None if ttl is None else now + ttl

    def _key_filter(self, key: Sequence[Any]) -> list[Any]:
        return [self.table.c[c] == v for c, v in zip(self.key_columns, key, strict=True)]

    def _delete_rows(self, conn: sa.Connection, key: Sequence[Any], span: Interval | None) -> int:
        """Delete the rows a refetch replaces, so rows the source dropped do not linger."""
        where = self._key_filter(key)
        if span is not None and self.time_column is not None:
            col = self.table.c[self.time_column]
            where.append(col >= self._bind_position(span[0]))
            where.append(col <= self._bind_position(span[1]))
        return conn.execute(self.table.delete().where(*where)).rowcount or 0

    def _bind_position(self, value: int) -> Any:
        return value if self.sequence else self.schema.bind_instant(value)

    # ------------------------------------------------------------------ reading

    def _read(self, conn: sa.Connection, req: _Request) -> pd.DataFrame:
        if not req.keys:
            return self.schema.empty_frame()
        t = self.table
        where = []
        for col, values in zip(self.key_columns, req.key_lists, strict=True):
            where.append(t.c[col] == values[0] if len(values) == 1 else t.c[col].in_(values))
        if self.mode == "range":
            assert self.time_column is not None and req.lo is not None and req.hi is not None
            tc = t.c[self.time_column]
            where.append(tc >= self._bind_position(req.lo))
            where.append(tc <= self._bind_position(req.hi))
        pk = [t.c[c] for c in self.schema.primary_key]
        stmt = sa.select(*t.c).where(*where).order_by(*pk)
        # Tens of thousands of fresh row tuples set off the cyclic GC again
        # and again (it doubled the time of a 36,500-row read); none of them
        # can form a cycle, so collection waits until the frame is built.
        paused = gc.isenabled()
        gc.disable()
        try:
            result = conn.execute(stmt)
            if self._raw_rows:
                # No column needs a result processor here: skip Row objects.
                rows = result.cursor.fetchall()
                result.close()
            else:
                rows = result.all()
            frame = self.schema.rows_to_frame(rows)
        finally:
            if paused:
                gc.enable()
        if len(req.keys) > 1 and len(frame) > 1 and self.engine.dialect.name != "sqlite":
            # The database orders strings by its collation (SQLite's BINARY is
            # code point order, like Python's); sort so every backend agrees.
            frame = frame.sort_values(self.schema.primary_key, kind="stable", ignore_index=True)
        return frame

    # ------------------------------------------------------------------ maintenance

    def invalidate_cache(self, **keys: Any) -> int:
        """Forget cached rows and coverage matching ``keys``; returns the rows deleted.

        Time series take key columns (values or lists; a column left out
        matches every value) and optionally ``start_date``/``end_date`` to
        forget only part of the range; lookups take ids. No arguments clears
        everything, like :meth:`clear_cache`.
        """
        if not keys:
            return self.clear_cache()
        req = self._normalize(keys, partial=True)
        t = self.table
        where = []
        for col, values in zip(self.key_columns, req.key_lists, strict=True):
            if values:
                where.append(t.c[col].in_(values))
        lo, hi = req.lo, req.hi
        if self.mode == "range" and (lo is not None or hi is not None):
            tc = t.c[self.time_column]  # type: ignore[index]
            if lo is not None:
                where.append(tc >= self._bind_position(lo))
            if hi is not None:
                where.append(tc <= self._bind_position(hi))
        wanted = [set(map(_json_key, v)) if v else None for v in req.key_lists]
        with self._db("invalidate cached rows"), self.engine.begin() as conn:
            deleted = conn.execute(t.delete().where(*where)).rowcount or 0
            labels = {e.key for e in self.ledger.entries(conn)}
            for label in labels:
                values = json.loads(label)
                if all(w is None or _json_key(v) in w for w, v in zip(wanted, values, strict=True)):
                    if lo is None and hi is None:
                        self.ledger.forget(conn, label, None, None)
                    else:
                        self.ledger.forget(
                            conn,
                            label,
                            lo if lo is not None else -(2**62),
                            hi if hi is not None else 2**62,
                        )
        logger.debug("invalidated %d row(s) of %s", deleted, self.table_name)
        return deleted

    def clear_cache(self) -> int:
        """Delete every cached row and all coverage; returns the rows deleted."""
        with self._db("clear the cache"), self.engine.begin() as conn:
            deleted = conn.execute(self.table.delete()).rowcount or 0
            self.ledger.clear(conn)
        return deleted

    def cleanup_expired(self) -> int:
        """Remove expired coverage and the rows only it covered; returns the entries removed."""
        now = self._clock()
        with self._db("clean up expired entries"), self.engine.begin() as conn:
            entries = self.ledger.entries(conn)
            expired = [e for e in entries if not e.valid(now)]
            if not expired:
                return 0
            valid: dict[str, list[Interval]] = {}
            for e in entries:
                if e.valid(now):
                    valid.setdefault(e.key, []).append((e.lo, e.hi))
            for e in expired:
                key = self._key_of(e)
                if self.mode == "lookup":
                    if e.key not in valid:
                        self._delete_rows(conn, key, None)
                    continue
                for part in _gaps.subtract((e.lo, e.hi), valid.get(e.key, [])):
                    self._delete_rows(conn, key, part)
            self.ledger.delete_ids(conn, [e.id for e in expired])
        logger.debug("removed %d expired coverage entries of %s", len(expired), self.table_name)
        return len(expired)

    def _key_of(self, entry: Entry) -> tuple[Any, ...]:
        values = json.loads(entry.key)
        return tuple(
            self.schema.bind_key(c, v) for c, v in zip(self.key_columns, values, strict=True)
        )

    def get_cache_stats(self) -> dict[str, Any]:
        """Rows, coverage and activity of this cache.

        ``rows`` and the coverage figures come from the database (all
        processes); ``fetches``, ``rows_fetched``, ``hits``, ``partial_hits``
        and ``misses`` count this instance's calls. ``intervals`` maps each
        key to its number of unexpired covered intervals (adjacent ones
        counted once); ``covered`` maps each key to those intervals (time
        series only); ``expired_intervals`` counts ledger entries past their TTL.
        """
        now = self._clock()
        with self._db("read cache statistics"), self.engine.connect() as conn:
            rows = conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()
            entries = self.ledger.entries(conn)
        by_key: dict[str, list[Interval]] = {}
        expired = 0
        for e in entries:
            if e.valid(now):
                by_key.setdefault(e.key, []).append((e.lo, e.hi))
            else:
                expired += 1
        intervals: dict[str, int] = {}
        covered: dict[str, list[tuple[Any, Any]]] = {}
        for label, spans in by_key.items():
            name = _display(label)
            if self.mode == "lookup":
                intervals[name] = 1
                continue
            grid = _gaps.merge(
                g for g in (_gaps.to_grid(lo, hi, self.step) for lo, hi in spans) if g is not None
            )
            intervals[name] = len(grid)
            covered[name] = [
                (self._value_param(lo * self.step), self._value_param(hi * self.step))
                for lo, hi in grid
            ]
        with self._lock:
            c = self._counters
            activity = {
                "fetches": c.fetches,
                "rows_fetched": c.rows_fetched,
                "hits": c.hits,
                "partial_hits": c.partial_hits,
                "misses": c.misses,
            }
        return {
            "table": self.table_name,
            "backend": self.engine.dialect.name,
            "rows": int(rows),
            "intervals": intervals,
            "covered": covered,
            "expired_intervals": expired,
            **activity,
        }

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Dispose the engine this cache created (an engine passed in is left open)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> SqlCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"SqlCache({url!r}, {self.table_name!r}, mode={self.mode!r})"


def _has_processor(type_: Any, dialect: sa.Dialect) -> bool:
    try:
        return type_.dialect_impl(dialect).result_processor(dialect, None) is not None
    except (TypeError, KeyError, ValueError):  # a processor that needs the column's type code
        return True


def _json_key(value: Any) -> str:
    return json.dumps(value, default=str)


def _display(label: str) -> str:
    values = json.loads(label)
    if len(values) == 1:
        return str(values[0])
    return "*" if not values else label


_BUILDER_OPTIONS = (
    "data_fetcher",
    "key_columns",
    "time_column",
    "time_increment",
    "ordered_increment",
    "ttl_seconds",
    "open_ttl_seconds",
    "gap_detector",
    "max_fetches",
    "columns",
    "primary_keys",
    "batch_fetch",
    "lease_seconds",
    "engine_kwargs",
    "clock",
)


def _merge_columns(
    builder: Callable[..., Any], columns: Mapping[str, Any] | None, column_types: Mapping[str, Any]
) -> dict[str, Any]:
    """Column types from ``columns=`` and keywords; a non-type keyword is most likely a typo."""
    from sqlalchemy.types import TypeEngine

    merged = dict(columns or {})
    for name, value in column_types.items():
        is_type = isinstance(value, TypeEngine) or (
            isinstance(value, type) and issubclass(value, TypeEngine)
        )
        if not is_type:
            close = difflib.get_close_matches(name, _BUILDER_OPTIONS, n=1)
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise CacheConfigError(
                f"{builder.__name__}() got {name}={value!r}: keywords other than its options "
                f"declare columns and need a SQLAlchemy type (e.g. {name}=Float){hint}"
            )
        if name in merged:
            raise CacheConfigError(f"column {name!r} is declared twice (columns= and keyword)")
        merged[name] = value
    return merged
