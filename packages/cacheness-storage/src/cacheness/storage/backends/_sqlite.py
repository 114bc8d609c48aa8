from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

from cacheness.storage.abc import EntryRecord, MetadataBackend
from cacheness.storage.backends._memory import matches_filter
from cacheness.storage.backends._rows import (
    COLUMNS,
    LOAD_COLUMNS,
    load_record,
    prefix_upper_bound,
    record_to_row,
    row_to_record,
)
from cacheness.storage.backends._snapshot import Reader, map_header
from cacheness.storage.errors import CacheBackendError

__all__ = ["SqliteMetadataBackend"]

logger = logging.getLogger(__name__)

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM entries"
_SELECT_KEY = _SELECT + " WHERE key = ?"
_INSERT = f"INSERT INTO entries ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_REPLACE = "INSERT OR REPLACE" + _INSERT[len("INSERT") :]
_SELECT_LOAD = f"SELECT {', '.join(LOAD_COLUMNS)} FROM entries WHERE key = ?"
# A rowid table, not WITHOUT ROWID: there a row over ~1000 bytes spills into an
# overflow page, and an inline value of 1 KB would cost a second page read per get.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY NOT NULL,
    blob_key TEXT NOT NULL,
    data_type TEXT NOT NULL,
    handler TEXT NOT NULL,
    codec TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    info TEXT NOT NULL,
    metadata TEXT NOT NULL,
    signature TEXT,
    inline_value BLOB
);
-- Inline entries (blob_key '') stay out of it: one page fewer to write per small put.
DROP INDEX IF EXISTS entries_blob_key;
CREATE INDEX IF NOT EXISTS entries_blob ON entries (blob_key) WHERE blob_key != '';
"""
# SQLite's own busy handler waits this long for a lock; BEGIN IMMEDIATE is
# retried on top of it, because under WAL a writer can still get SQLITE_BUSY
# without waiting (for example while a checkpoint runs).
_BUSY_TIMEOUT_S = 30.0
_LOCK_RETRIES = 20
# How often a write transaction checks that the database file is still the one
# opened (a stat(), ~1.7 µs): a file deleted under an open connection takes every
# later write with it when the connection closes.
_FILE_CHECK_S = 1.0
# Address space, not memory: SQLite maps at most the file, and the kernel pages it in
# and out. With 1M small entries (~350 MB) a random get took 10.7 µs mapped whole
# against 13.5 µs with the first 64 MiB mapped (copies through its page cache).
MMAP_BYTES = 1024 * 1024 * 1024
# Forks of this process so far (in the child), so connections notice a fork cheaply.
_FORKS = [0]
_BACKENDS: weakref.WeakSet[SqliteMetadataBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _FORKS[0] += 1
    # SQLite keeps its lock bookkeeping per process and per file: a connection opened
    # in the child beside inherited ones believes the parent's locks are its own and
    # never takes them, and the parent, closing last as far as the file's locks show,
    # then deletes the WAL the child goes on committing to. So the inherited ones go
    # first. (The snapshot reaper ended every read transaction before the fork.)
    for backend in list(_BACKENDS):
        backend._drop_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SqliteMetadataBackend(MetadataBackend):
    """Entries in a SQLite file in WAL mode, one connection per thread.

    Uses the ``sqlite3`` module directly: a primary-key lookup costs a few
    microseconds there against ~18 µs through SQLAlchemy Core, and the small
    ``get`` is the hot path.
    """

    name: ClassVar[str] = "sqlite"
    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    supports_inline: ClassVar[bool] = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._local = threading.local()
        # (owning thread, its connection's Reader): a connection is closed once its
        # thread is gone, so thread-pool churn does not pile up open files until close().
        self._all: list[tuple[threading.Thread, Reader]] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._forks: int | None = _FORKS[0]
        # Bumped when the file is found deleted or replaced: each thread's connection
        # remembers the epoch it was opened in.
        self._epoch = 0
        self._reopen_hooks: list[Callable[[sqlite3.Connection], None]] = []
        _BACKENDS.add(self)
        self._create(self._conn())
        self._file_id = _file_id(self.path)
        self._next_check = time.monotonic() + _FILE_CHECK_S

    def _create(self, conn: sqlite3.Connection) -> None:
        try:
            conn.executescript(_SCHEMA)
            _add_inline_column(conn)
        except sqlite3.Error as exc:
            raise CacheBackendError(
                f"cannot create tables in {self.path}: {exc}", backend=self.name
            ) from exc

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqliteMetadataBackend:
        parsed = urlparse(url)
        # sqlite:///relative/x.db and sqlite:////abs/x.db, as SQLAlchemy spells them.
        path = unquote(parsed.path[1:] if parsed.path.startswith("/") else parsed.path)
        if not path or path == ":memory:":
            raise CacheBackendError(
                f"{url!r} names no database file; use backend='memory' for an in-memory store",
                backend=cls.name,
            )
        return cls(path, **options)

    # ------------------------------------------------------------ connections

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        # A fork counter, not os.getpid() (a system call) on every statement.
        if conn is not None and self._forks == _FORKS[0]:
            reader = self._local.reader
            if reader.held:
                reader.release()  # whatever the caller runs sees the newest state
            return conn
        if self._closed:
            raise CacheBackendError(f"metadata database {self.path} is closed", backend=self.name)
        if self._pid != os.getpid():
            # A forked child must not share its parent's connections (the fork hook
            # dropped them already, unless the process forked without running it).
            self._drop_inherited()
        elif conn is not None and (self._local.epoch == self._epoch or self._local.depth):
            # After a reopen (see _check_file) every call comes here: this thread's
            # connection is current, or in a transaction that must end on it.
            self._local.reader.release()
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            # Pages read through a mapping: a commit costs ~7 µs less.
            conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        except sqlite3.Error as exc:
            raise CacheBackendError(
                f"cannot open metadata database {self.path}: {exc}", backend=self.name
            ) from exc
        reader = Reader(conn, map_header(conn, self.path))
        self._local.conn = conn
        self._local.reader = reader
        self._local.depth = 0
        self._local.epoch = self._epoch
        with self._all_lock:
            alive = []
            for thread, other in self._all:
                if thread.is_alive():
                    alive.append((thread, other))
                else:
                    other.close()
            alive.append((threading.current_thread(), reader))
            self._all = alive
        return conn

    def on_reopen(self, hook: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``hook(connection)`` whenever the database file turns out to have been
        deleted (a new, empty one is made) or replaced, after this backend's own tables
        are there: a user of the same file creates its tables in it again."""
        self._reopen_hooks.append(hook)

    def _check_file(self) -> sqlite3.Connection:
        """This thread's connection for a new write transaction, on the file now at
        ``path``: a deleted file (``rm -rf`` of the cache folder) is made again, empty,
        rather than letting writes go to an unlinked file and vanish on close."""
        self._next_check = time.monotonic() + _FILE_CHECK_S
        now = _file_id(self.path)
        if now is not None and now == self._file_id:
            return self._conn()
        logger.warning(
            "metadata database %s was %s while open; writing to %s from now on",
            self.path,
            "deleted" if now is None else "replaced",
            "a new, empty one" if now is None else "the new file",
        )
        self._epoch += 1
        old: Reader = self._local.reader
        self._local.conn = None
        with self._all_lock:
            self._all = [(t, r) for t, r in self._all if r is not old]
            others = len(self._all)
        old.close()
        # With no other thread holding a connection, none can be stale: keep the fast
        # path. Otherwise every call goes through the epoch check in _conn.
        self._forks = _FORKS[0] if not others else None
        conn = self._conn()
        self._create(conn)
        self._file_id = _file_id(self.path)
        for hook in self._reopen_hooks:
            hook(conn)
        return conn

    def _transaction(self) -> _Transaction:
        """A write transaction (BEGIN IMMEDIATE); nested ones join the outer one."""
        return _Transaction(self)

    def _begin(self, conn: sqlite3.Connection) -> None:
        reader = self._local.reader
        if reader.held:  # a write cannot begin inside a read transaction
            reader.release()
        for attempt in range(_LOCK_RETRIES):
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise CacheBackendError(f"{self.path}: {exc}", backend=self.name) from exc
                if attempt == _LOCK_RETRIES - 1:
                    raise CacheBackendError(
                        f"{self.path} stayed locked by another process for too long; "
                        "is a process stuck holding a write transaction?",
                        backend=self.name,
                    ) from exc
                time.sleep(0.01 * (attempt + 1))

    def _commit(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # A failed COMMIT leaves the transaction open; close it so the
            # connection stays usable, and report the write as failed.
            rollback(conn)
            raise CacheBackendError(
                f"{self.path}: could not commit: {exc}", backend=self.name
            ) from exc

    def write_lock(self) -> Any:
        return self._transaction()

    def _row(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The row of ``sql``, a query that returns at most one (a lookup by a unique
        key), or None, read in this thread's held snapshot (see ``_snapshot``).
        Raises ``sqlite3.Error``."""
        reader = getattr(self._local, "reader", None)
        if reader is None or self._forks != _FORKS[0] or time.monotonic() >= self._next_check:
            self._read_conn()  # a new, forked or reopened connection comes with its Reader
            reader = self._local.reader
        return reader.row(sql, params)

    def _read_conn(self) -> sqlite3.Connection:
        """This thread's connection for a read; once per ``_FILE_CHECK_S`` a read also
        checks that the file is still the one at ``path`` (see ``_check_file``), or a
        process that only reads would go on reading a deleted folder's file for good."""
        if time.monotonic() >= self._next_check and not getattr(self._local, "depth", 0):
            return self._check_file()
        return self._conn()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._read_conn().execute(sql, params)
        except sqlite3.Error as exc:
            raise CacheBackendError(f"{self.path}: {exc}", backend=self.name) from exc

    # --------------------------------------------------------------- queries

    def get(self, key: str) -> EntryRecord | None:
        row = self._execute(_SELECT_KEY, (key,)).fetchone()
        return None if row is None else row_to_record(row)

    def get_for_load(self, key: str) -> EntryRecord | None:
        # Each column read costs ~0.3 µs: skip those a load does not need.
        try:
            row = self._row(_SELECT_LOAD, (key,))
        except sqlite3.Error as exc:
            raise CacheBackendError(f"{self.path}: {exc}", backend=self.name) from exc
        if row is None:
            return None
        return load_record(key, row)

    def put(self, record: EntryRecord) -> EntryRecord | None:
        values = record_to_row(record)
        row = None
        try:
            with self._transaction() as conn:
                try:
                    # Most puts name a new key: one statement instead of SELECT + REPLACE.
                    conn.execute(_INSERT, values)
                except sqlite3.IntegrityError:
                    row = conn.execute(_SELECT_KEY, (record.key,)).fetchone()
                    conn.execute(_REPLACE, values)
        except sqlite3.Error as exc:
            raise CacheBackendError(
                f"{self.path}: {exc}", key=record.key, backend=self.name
            ) from exc
        return None if row is None else row_to_record(row)

    def delete(self, key: str) -> EntryRecord | None:
        try:
            with self._transaction() as conn:
                row = conn.execute(_SELECT_KEY, (key,)).fetchone()
                if row is not None:
                    conn.execute("DELETE FROM entries WHERE key = ?", (key,))
        except sqlite3.Error as exc:
            raise CacheBackendError(f"{self.path}: {exc}", key=key, backend=self.name) from exc
        return None if row is None else row_to_record(row)

    def update_metadata(self, key: str, metadata: Mapping[str, Any]) -> EntryRecord | None:
        return super().update_metadata(key, metadata)

    def list_keys(
        self, prefix: str | None = None, metadata_filter: Mapping[str, Any] | None = None
    ) -> list[str]:
        where: list[str] = []
        params: list[Any] = []
        if prefix:
            where.append("key >= ?")
            params.append(prefix)
            upper = prefix_upper_bound(prefix)
            if upper is not None:
                where.append("key < ?")
                params.append(upper)
        for name, value in (metadata_filter or {}).items():
            # SQLite's JSON paths cannot escape a quote or backslash in a label: such
            # names are matched below only.
            if (
                isinstance(value, str | int | float)
                and not isinstance(value, bool)
                and not (isinstance(value, int) and not -(2**63) <= value < 2**63)
                and '"' not in name
                and "\\" not in name
            ):
                # Narrow in SQL; the exact, type-aware comparison happens below.
                where.append("json_extract(metadata, ?) = ?")
                params.extend([_json_path(name), value])
        sql = "SELECT key, metadata FROM entries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY key"
        rows = self._execute(sql, tuple(params)).fetchall()
        if not metadata_filter:
            return [r[0] for r in rows]
        import json

        return [r[0] for r in rows if matches_filter(json.loads(r[1]), metadata_filter)]

    def count_refs(self, blob_key: str) -> int:
        row = self._execute(
            # The second term lets SQLite use the partial index.
            "SELECT COUNT(*) FROM entries WHERE blob_key = ? AND blob_key != ''",
            (blob_key,),
        ).fetchone()
        return int(row[0])

    def iter_records(self) -> Iterator[EntryRecord]:
        rows = self._execute(_SELECT + " ORDER BY key").fetchall()
        return (row_to_record(r) for r in rows)

    def blob_keys(self) -> set[str]:
        return {
            r[0]
            for r in self._execute(
                "SELECT DISTINCT blob_key FROM entries WHERE blob_key != ''"
            ).fetchall()
        }

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for _thread, reader in conns:
            reader.close()
        self._local = threading.local()

    def _drop_inherited(self) -> None:
        """In a forked child: close the parent's connections (see _after_fork_in_child);
        this process's own are opened on first use."""
        inherited, self._all = self._all, []
        self._all_lock = threading.Lock()
        self._local = threading.local()
        self._pid = os.getpid()
        self._forks = _FORKS[0]
        for _thread, reader in inherited:
            try:
                reader.close()
            except Exception as exc:  # noqa: BLE001 - a child must start either way
                logger.debug("closing an inherited connection to %s: %s", self.path, exc)


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, or None when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL, retrying while another process does the same.

    Turning a new file to WAL takes the write lock without SQLite's busy
    handler (two readers asking for it would deadlock), so processes opening
    a fresh database at once get "database is locked" at once, not after
    ``timeout``. Once the file is in WAL mode the pragma takes no lock.
    """
    for attempt in range(_LOCK_RETRIES):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if attempt == _LOCK_RETRIES - 1:
                raise
            time.sleep(0.01 * (attempt + 1))


def _add_inline_column(conn: sqlite3.Connection) -> None:
    """Give a database made before inline values existed their column."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(entries)")}
    if "inline_value" in cols:
        return
    try:
        conn.execute("ALTER TABLE entries ADD COLUMN inline_value BLOB")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):  # another process added it first
            raise


class _Transaction:
    """The context manager of ``write_lock()``: a class, not a generator, because
    every put enters several (nested) of them and a generator costs ~1.5 µs each."""

    __slots__ = ("_backend", "_conn", "_outer")

    def __init__(self, backend: SqliteMetadataBackend) -> None:
        self._backend = backend
        self._outer = False

    def __enter__(self) -> sqlite3.Connection:
        backend = self._backend
        conn = self._conn = backend._conn()
        local = backend._local
        depth: int = local.depth
        if depth:
            local.depth = depth + 1
            return conn
        if time.monotonic() >= backend._next_check:
            conn = self._conn = backend._check_file()
        backend._begin(conn)
        local.depth = 1
        self._outer = True
        return conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        local = self._backend._local
        if not self._outer:
            local.depth -= 1
            return
        try:
            if exc_type is not None:
                rollback(self._conn)
            else:
                self._backend._commit(self._conn)
        finally:
            local.depth = 0


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            logger.debug("rollback failed (the transaction is already gone): %s", exc)


def _json_path(name: str) -> str:
    return '$."' + name + '"'
