"""``SqlCache``: a local SQL table in front of a slow source, fetching only what is missing.

One request goes: normalise the parameters; read the coverage ledger for
the requested keys; subtract the unexpired coverage from the requested
range on the increment grid; if nothing is missing, read the rows and
return. Otherwise take the lease on the keys with gaps, re-read the ledger
(another process may have fetched meanwhile), call the fetcher once per
remaining gap, check every frame against the table, and write rows and
ledger in one transaction. A fetcher that raises, or a frame that does not
fit, leaves the cache exactly as it was.

The steps live beside this module: ``_request`` normalises and plans,
``_rows`` fetches, stores, reads and deletes, ``_database`` makes the engine
and tables, ``_options`` resolves the keying options, ``_stats`` counts.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal

import pandas as pd  # type: ignore[import-untyped, unused-ignore]
import sqlalchemy as sa

from cacheness.sql._database import _create_tables, _db, _make_engine
from cacheness.sql._fetchers import accepts_list
from cacheness.sql._ledger import Ledger
from cacheness.sql._options import _layout, _merge_columns
from cacheness.sql._request import _normalize, _plan, _Request, _tasks_from_detector
from cacheness.sql._rows import _cleanup_expired, _has_processor, _invalidate, _read, _run
from cacheness.sql._schema import TableSchema, build_specs
from cacheness.sql._stats import _COUNTER_OF, _cache_stats, _Counters
from cacheness.storage.errors import CacheConfigError

__all__ = ["GapDetector", "SqlCache"]

logger = logging.getLogger(__name__)

#: ``gap_detector(query_params, cached_data, cache) -> list of fetcher keyword dicts``
GapDetector = Callable[[dict[str, Any], pd.DataFrame, "SqlCache"], list[dict[str, Any]]]

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
_LOOKUP_LEASE = "*"


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

        self.time_column = time_column
        self.sequence = ordered_increment is not None
        layout = _layout(
            key_columns=key_columns,
            time_column=time_column,
            time_increment=time_increment,
            ordered_increment=ordered_increment,
            primary_keys=primary_keys,
        )
        self.mode: Literal["range", "lookup"] = layout.mode
        self.key_columns = layout.key_columns
        self.step = layout.step
        self.start_name, self.end_name = layout.start_name, layout.end_name
        specs = build_specs(
            table_name=table_name,
            key_names=self.key_columns,
            time_column=time_column,
            sequence=self.sequence,
            declared=declared,
        )

        if isinstance(db_url, sa.Engine):
            self.engine = db_url
            self._owns_engine = False
        else:
            self.engine = _make_engine(os.fspath(db_url), engine_kwargs)
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
            _create_tables(self)
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

    # ------------------------------------------------------------------ requests

    def find_gaps(self, **params: Any) -> list[dict[str, Any]]:
        """The fetcher calls the built-in detector would make for these ``get_data`` params.

        Nothing is fetched. A custom ``gap_detector`` can start from this and
        adjust it, e.g. ``cache.find_gaps(**query_params)``.
        """
        req = _normalize(self, params)
        with _db(self, "read the coverage ledger"), self.engine.connect() as conn:
            tasks, _ = _plan(self, conn, req, self._clock())
        return [t.params for t in tasks]

    def get_data(self, **params: Any) -> pd.DataFrame:
        """The rows for ``params``, fetching only what is missing or expired.

        Time series: the key columns (a value or a list of values) and
        ``start_date``/``end_date`` (``start``/``end`` for integer
        sequences); lookups: the primary key columns (a value or a list).
        Returns the declared column types, sorted by key and time, exactly
        the requested range. A fetcher's exception propagates unchanged and
        leaves the cache as it was.
        """
        req = _normalize(self, params)
        if self.gap_detector is not None:
            return self._get_with_detector(req)
        with _db(self, "read the cache"), self.engine.connect() as conn:
            tasks, kind = _plan(self, conn, req, self._clock())
            if not tasks:
                self._counters.add(hits=1)
                logger.debug("hit on %s for %d key(s)", self.table_name, len(req.keys))
                return _read(self, conn, req)
        lease_keys = _LOOKUP_LEASE if self.mode == "lookup" else None
        with self._leased(
            [lease_keys] if lease_keys else [c.label for t in tasks for c in t.covers]
        ):
            with _db(self, "read the coverage ledger"), self.engine.connect() as conn:
                # Another process may have fetched while we waited for the lease.
                tasks, kind = _plan(self, conn, req, self._clock())
            if tasks:
                _run(self, tasks)
        self._counters.add(**{_COUNTER_OF[kind]: 1})
        with _db(self, "read the cache"), self.engine.connect() as conn:
            return _read(self, conn, req)

    def _get_with_detector(self, req: _Request) -> pd.DataFrame:
        assert self.gap_detector is not None
        with _db(self, "read the cache"), self.engine.connect() as conn:
            cached = _read(self, conn, req)
        fetches = self.gap_detector(dict(req.params), cached, self)
        tasks = _tasks_from_detector(self, fetches)
        if not tasks:
            self._counters.add(hits=1)
            return cached
        labels = [c.label for t in tasks for c in t.covers] or req.labels
        with self._leased([_LOOKUP_LEASE] if self.mode == "lookup" else labels):
            _run(self, tasks)
        self._counters.add(partial_hits=1 if len(cached) else 0, misses=0 if len(cached) else 1)
        with _db(self, "read the cache"), self.engine.connect() as conn:
            return _read(self, conn, req)

    @contextmanager
    def _leased(self, keys: Sequence[str]) -> Iterator[None]:
        with _db(self, "take the fetch lease"):
            token = self.ledger.acquire(self.engine, keys, self.lease_seconds)
        try:
            yield
        finally:
            with _db(self, "release the fetch lease"):
                self.ledger.release(self.engine, token)

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
        return _invalidate(self, keys)

    def clear_cache(self) -> int:
        """Delete every cached row and all coverage; returns the rows deleted."""
        with _db(self, "clear the cache"), self.engine.begin() as conn:
            deleted = conn.execute(self.table.delete()).rowcount or 0
            self.ledger.clear(conn)
        return deleted

    def cleanup_expired(self) -> int:
        """Remove expired coverage and the rows only it covered; returns the entries removed."""
        return _cleanup_expired(self)

    def get_cache_stats(self) -> dict[str, Any]:
        """Rows, coverage and activity of this cache.

        ``rows`` and the coverage figures come from the database (all
        processes); ``fetches``, ``rows_fetched``, ``hits``, ``partial_hits``
        and ``misses`` count this instance's calls. ``intervals`` maps each
        key to its number of unexpired covered intervals (adjacent ones
        counted once); ``covered`` maps each key to those intervals (time
        series only); ``expired_intervals`` counts ledger entries past their TTL.
        """
        return _cache_stats(self)

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
