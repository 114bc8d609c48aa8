"""The index tables inside the BlobStore's metadata file, on the store's connections
(``SharedSqliteIndex``): a put commits the store entry and the index row in one
transaction, and a small value can live in the index row itself."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cacheness.policy._base import CacheIndex, Generation
from cacheness.policy._sqlite import _HELD_COLS, SqliteIndex, _create_schema, _order_by
from cacheness.storage.abc import EntryRecord
from cacheness.storage.backends._rows import (
    LOAD_COLUMNS,
    from_micros,
    loads_json,
)
from cacheness.storage.backends._sqlite import rollback
from cacheness.storage.errors import CacheBackendError

if TYPE_CHECKING:
    from cacheness.storage.backends import SqliteMetadataBackend

__all__ = ["SharedSqliteIndex"]


# What a small get reads, in one query: the index row and, unless the row holds the
# value itself, the store entry it names; the columns after the first two are
# LOAD_COLUMNS' (blob_key NULL: the store entry is gone). It runs after _HELD_GET
# found no held value, yet still reads a held one: another process may have
# overwritten the key in between, and a plain join would take that for a lost entry.
assert LOAD_COLUMNS == (
    "blob_key", "handler", "codec", "size", "content_hash", "info", "inline_value"
)  # fmt: skip
_JOINED = (
    "SELECT c.store_key, c.expires, CASE WHEN c.value IS NULL THEN e.blob_key ELSE '' END, "
    "coalesce(c.value_handler, e.handler), coalesce(c.value_codec, e.codec), "
    "coalesce(e.size, c.size), coalesce(c.value_hash, e.content_hash), "
    "coalesce(c.value_info, e.info), coalesce(c.value, e.inline_value) "
    "FROM cache_entries c LEFT JOIN entries e ON c.value IS NULL AND e.key = c.store_key "
    "WHERE c.key = ?"
)
_LOOKUP = "SELECT store_key, expires FROM cache_entries WHERE key = ?"
# The index row alone, all a get of a held value reads: (store_key, expires, handler,
# codec, size, content_hash, info, value), the last six None unless the row holds it.
_HELD_GET = (
    "SELECT store_key, expires, value_handler, value_codec, size, value_hash, value_info, "
    "value FROM cache_entries WHERE key = ?"
)

# A get without the memory tier reads less: each result column costs ~0.1 µs, as
# much as the B-tree search. (value_hash, value, format): format None when the row
# holds a live plain pickle (handler "pickle", codec "none", no info, its recorded
# size), a JSON array [handler, codec, size, info] when it holds another live value,
# and '' when the value is in the store or expired at ?1.
_HELD_FORMAT = (
    "WHEN value_handler = 'pickle' AND value_codec = 'none' AND value_info = '{}' "
    "AND size = length(value) THEN NULL "
    "ELSE json_array(value_handler, value_codec, size, value_info) END"
)
_VALUE_GET = (
    "SELECT value_hash, value, CASE WHEN value IS NULL OR expires <= ?1 THEN '' "
    f"{_HELD_FORMAT} FROM cache_entries WHERE key = ?2"
)

# A get with the memory tier needs the store key and expiry to remember the value
# by: (store_key, expires, value_hash, value, format), the format as in _VALUE_GET
# but '' only when the value is in the store (the caller checks expiry).
_TIER_GET = (
    "SELECT store_key, expires, value_hash, value, CASE WHEN value IS NULL THEN '' "
    f"{_HELD_FORMAT} FROM cache_entries WHERE key = ?"
)


class SharedSqliteIndex(SqliteIndex):
    """The index tables inside the BlobStore's own SQLite file, on its connections.

    A put then commits the store entry and the index row in one transaction
    (the store's ``write_lock``, which nests), and a get of a small value reads
    both in one indexed query (:meth:`lookup_entry`).
    """

    def __init__(self, backend: SqliteMetadataBackend, generation: Generation, policy: str) -> None:
        CacheIndex.__init__(self, generation)
        self.path = backend.path
        self._backend = backend
        self._policy = policy
        self._order = _order_by(policy)
        self._closed = False
        self._pid = os.getpid()
        self._lock = threading.RLock()  # unused: connections are per thread
        with self._guard():
            _create_schema(backend._conn(), policy, lambda conn: backend.write_lock())
        backend.on_reopen(self._reopened)

    def _reopened(self, conn: sqlite3.Connection) -> None:
        """The store's file was deleted or replaced (see ``SqliteMetadataBackend``):
        make the index tables in it, and move the generation past every value this
        process has seen, so a memory tier re-checks what it holds."""
        seen = self.generation.read()
        self.generation.reopen()
        with self._guard():
            _create_schema(conn, self._policy, lambda c: self._backend.write_lock())
            with self._backend.write_lock() as c:
                c.execute(
                    "UPDATE cache_state SET generation = max(generation, ?) + 1 WHERE id = 1",
                    (seen,),
                )
                (gen,) = c.execute("SELECT generation FROM cache_state WHERE id = 1").fetchone()
        self.generation.publish(gen)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise CacheBackendError(f"cache index {self.path}: {exc}", backend=self.name) from exc

    def _check(self) -> sqlite3.Connection:
        if self._closed:
            raise CacheBackendError("the cache index is closed", backend=self.name)
        return self._backend._conn()

    def _txn(self) -> Any:
        self._check()
        return _SharedTxn(self)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._guard():
            return self._check().execute(sql, params).fetchall()

    def _by_key(self, sql: str, key: str, *params: Any) -> Any:
        """The row ``sql`` selects for ``key`` (bound last, after ``params``), or None."""
        if self._closed:
            self._check()
        try:
            return self._backend._row(sql, (*params, key))
        except sqlite3.Error as exc:
            raise CacheBackendError(f"cache index: {exc}", key=key, backend=self.name) from exc

    def lookup(self, key: str) -> tuple[str, float | None] | None:
        r = self._by_key(_LOOKUP, key)
        return None if r is None else (r[0], r[1])

    def lookup_held(self, key: str) -> Any:
        """The ``_HELD_GET`` columns of ``key``'s row, or None; when the value is in the
        store (``value`` None), :meth:`lookup_entry` reads it with the row."""
        return self._by_key(_HELD_GET, key)

    def lookup_value(self, key: str, now: float) -> Any:
        """``(content_hash, value, format)`` of ``key``'s row (see ``_VALUE_GET``), or None."""
        # _by_key inlined: this is every small get's query, and each Python call
        # layer costs ~0.3 µs here (more when other work has cooled the CPU caches).
        if self._closed:
            self._check()
        try:
            return self._backend._row(_VALUE_GET, (now, key))
        except sqlite3.Error as exc:
            raise CacheBackendError(f"cache index: {exc}", key=key, backend=self.name) from exc

    def lookup_for_tier(self, key: str) -> Any:
        """``(store_key, expires, content_hash, value, format)`` of ``key``'s row (see
        ``_TIER_GET``), or None."""
        return self._by_key(_TIER_GET, key)

    def lookup_entry(self, key: str) -> Any:
        """``(store_key, expires, *LOAD_COLUMNS)`` of ``key`` (the store's columns None
        when its entry is gone), or None."""
        return self._by_key(_JOINED, key)

    def held_record(self, key: str, store_key: str) -> EntryRecord | None:
        """The whole record of the value ``key``'s row holds (None unless it still holds
        the value put as ``store_key``), for metadata; ``record.key`` is the cache key."""
        with self._guard():
            r = (
                self._check()
                .execute(
                    f"SELECT {_HELD_COLS}, size, metadata FROM cache_entries "
                    "WHERE key = ? AND store_key = ? AND value IS NOT NULL",
                    (key, store_key),
                )
                .fetchone()
            )
        if r is None:
            return None
        return EntryRecord(
            key, "", r[0], r[1], r[2], r[7], r[3], from_micros(r[4]),
            loads_json(r[5]), loads_json(r[8]), None, r[6],
        )  # fmt: skip

    def close(self) -> None:
        # The connections are the store's: it closes them.
        self._closed = True
        self.generation.close()


class _SharedTxn:
    """The store's write transaction (joined when one is open, as ``write_lock()``
    does), with SQLite errors reported as the index's. It drives the backend's
    connection itself: one object per put instead of two, ~1 µs of a small put."""

    __slots__ = ("_conn", "_index", "_outer")

    def __init__(self, index: SharedSqliteIndex) -> None:
        self._index = index
        self._outer = False

    def __enter__(self) -> sqlite3.Connection:
        backend = self._index._backend
        try:
            conn = self._conn = backend._conn()
            local = backend._local
            if local.depth:  # inside the store's own transaction (a put's ``within``)
                local.depth += 1
                return conn
            if time.monotonic() >= backend._next_check:
                conn = self._conn = backend._check_file()
            backend._begin(conn)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        local.depth = 1
        self._outer = True
        return conn

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        index = self._index
        backend = index._backend
        local = backend._local
        if not self._outer:
            # Joined: the store's transaction commits (the cache publishes then) or not.
            local.depth -= 1
        else:
            committed = False
            try:
                if exc_type is not None:
                    rollback(self._conn)
                else:
                    backend._commit(self._conn)
                    committed = True
            finally:
                local.depth = 0
                if committed:
                    index.publish()
                else:
                    index._forget_reached()
        if isinstance(exc, sqlite3.Error):
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> CacheBackendError:
        index = self._index
        return CacheBackendError(f"cache index {index.path}: {exc}", backend=index.name)
