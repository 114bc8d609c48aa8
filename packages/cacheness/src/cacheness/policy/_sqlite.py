"""The index in SQLite, in a file of its own (``SqliteIndex``): schema, queries,
eviction and the access flush. ``_shared_sqlite`` puts the same tables inside
the BlobStore's metadata file."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacheness.policy._base import (
    COUNTERS,
    POLICY_ORDER,
    CacheIndex,
    Generation,
    IndexRow,
    Limits,
    Pending,
    PutResult,
)
from cacheness.storage.abc import EntryRecord
from cacheness.storage.backends._rows import (
    dumps_json,
    to_micros,
)
from cacheness.storage.backends._sqlite import MMAP_BYTES, enable_wal
from cacheness.storage.errors import CacheBackendError

if TYPE_CHECKING:
    pass

__all__ = ["SqliteIndex"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- SQLite

# A rowid table, not WITHOUT ROWID: rows may hold a value of up to 16 KiB, which a
# WITHOUT ROWID B-tree spills to overflow pages (slower puts and gets). The value_*
# columns are set only for a value held in the row (``is_held(store_key)``).
_ENTRIES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    key TEXT PRIMARY KEY NOT NULL,
    store_key TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    accessed REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    expires REAL,
    key_params TEXT,
    description TEXT,
    metadata TEXT NOT NULL DEFAULT '{{}}',
    value_type TEXT,
    value_handler TEXT,
    value_codec TEXT,
    value_hash TEXT,
    value_created_us INTEGER,
    value_info TEXT,
    value BLOB
)"""
_SCHEMA = (
    _ENTRIES_TABLE.format(name="cache_entries")
    + """;
CREATE INDEX IF NOT EXISTS cache_entries_expires ON cache_entries (expires)
    WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS cache_contents (
    content_hash TEXT PRIMARY KEY NOT NULL,
    size INTEGER NOT NULL,
    refs INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cache_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL DEFAULT 0,
    hits INTEGER NOT NULL DEFAULT 0,
    misses INTEGER NOT NULL DEFAULT 0,
    evictions INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    entries INTEGER NOT NULL DEFAULT 0,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    rowid_order INTEGER NOT NULL DEFAULT 1
);
INSERT OR IGNORE INTO cache_state (id) VALUES (1);
CREATE TABLE IF NOT EXISTS cache_access (
    kid INTEGER PRIMARY KEY,
    hits INTEGER NOT NULL,
    accessed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cache_leases (
    name TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
"""
)
_ROW_COLS = (
    "key, store_key, content_hash, size, created, accessed, hits, expires, "
    "key_params, description, metadata"
)
_HELD_COLS = (
    "value_type, value_handler, value_codec, value_hash, value_created_us, value_info, value"
)
# What reads add to an entry's access data waits in cache_access (kid: the entry's
# rowid; 20-byte rows, ~200 per page) until eviction needs the entry's place in the
# policy order (``_evict`` moves it into the row then). Written into cache_entries,
# each distinct key read rewrote a page of the table and two of the policy index:
# at 1,000,000 entries a batch of 4096 keys took 0.3-0.7 s (0.12-0.16 s here), longer
# than the gets that fill it. Readers of access data add both (_ROW_SELECT).
_ROW_SELECT = (
    "e.key, e.store_key, e.content_hash, e.size, e.created, "
    "max(e.accessed, coalesce(a.accessed, e.accessed)), e.hits + coalesce(a.hits, 0), "
    "e.expires, e.key_params, e.description, e.metadata "
    "FROM cache_entries AS e LEFT JOIN cache_access AS a ON a.kid = e.rowid"
)
# LRU order is rowid order: a row's rowid is its ``accessed`` time in microseconds
# (_rowid_at), so the table itself is the LRU index. An index on ``accessed`` cost
# every put an index page (~4.5 µs of a 1 KB put here). The rowid changes only with
# ``accessed``: at insert, and when eviction moves an entry's reads into its row
# (_move_reads). An overwrite, a touch or a replaced value keeps both and records
# its access time in cache_access, as a read does. ``cache_state.rowid_order``
# marks a file whose rows follow this rule; an older one is rebuilt on open.
_ROWID_LIMIT = 9.2e12  # seconds whose microseconds still fit a 64-bit rowid


def _rowid_at(t: float) -> int | None:
    """The rowid of a row accessed at ``t``; None (SQLite's next rowid) for a time
    no rowid can hold."""
    return int(t * 1_000_000) if -_ROWID_LIMIT < t < _ROWID_LIMIT else None


def _order_by(policy: str) -> str:
    """The ``ORDER BY`` of eviction candidates (``e`` is cache_entries)."""
    if policy == "lru":
        return "e.rowid"
    return ", ".join(f"e.{c}" for c in POLICY_ORDER[policy])


def _taken(exc: sqlite3.IntegrityError) -> bool:
    """Whether ``exc`` is a rowid conflict (two rows accessed in one microsecond)."""
    return exc.sqlite_errorname == "SQLITE_CONSTRAINT_ROWID"


_LOCK_RETRIES = 50
# Batches of reads from this many keys go through a temporary table and one
# statement, fewer with one statement per key.
_MANY_READS = 64
_READS_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS cache_reads "
    "(key TEXT PRIMARY KEY NOT NULL, hits INTEGER NOT NULL, accessed REAL NOT NULL)"
)
# Only for keys still in the index (an entry may have gone since it was read).
_ADD_ACCESS = (
    " ON CONFLICT (kid) DO UPDATE SET hits = hits + excluded.hits, "
    "accessed = max(accessed, excluded.accessed)"
)
_APPLY_READS = (
    "INSERT INTO cache_access (kid, hits, accessed) SELECT e.rowid, r.hits, r.accessed "
    "FROM temp.cache_reads AS r JOIN cache_entries AS e ON e.key = r.key WHERE true" + _ADD_ACCESS
)
_APPLY_READ = (
    "INSERT INTO cache_access (kid, hits, accessed) SELECT rowid, ?, ? FROM cache_entries "
    "WHERE key = ?" + _ADD_ACCESS
)
_DROP_ACCESS = "DELETE FROM cache_access WHERE kid = ?"
# An overwrite's new value has no reads yet, and was accessed now.
_RESET_ACCESS = "INSERT OR REPLACE INTO cache_access (kid, hits, accessed) VALUES (?, 0, ?)"
_OLD_VALUE = "SELECT store_key, content_hash, size, rowid FROM cache_entries WHERE key = ?"
_STATE = "SELECT generation, entries, size_bytes FROM cache_state WHERE id = 1"
_INSERT_ROW = (
    f"INSERT INTO cache_entries (rowid, {_ROW_COLS}, {_HELD_COLS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Every column but the key and ``accessed``, which stays the rowid's (see _rowid_at);
# the overwrite's access time waits in cache_access (_RESET_ACCESS).
_OVERWRITE_COLS = [c for c in f"{_ROW_COLS}, {_HELD_COLS}".split(", ")[1:] if c != "accessed"]
_OVERWRITE_ROW = (
    "UPDATE cache_entries SET "
    + ", ".join(f"{col} = ?" for col in _OVERWRITE_COLS)
    + " WHERE key = ?"
)
_NOT_HELD = (None,) * 7
# A cache_entries table of the layout before values could be held in it.
_OLD_LAYOUT = (
    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'cache_entries' "
    "AND sql LIKE '%WITHOUT ROWID%'"
)


_UNORDERED = "SELECT count(*) = 0 FROM pragma_table_info('cache_state') WHERE name = 'rowid_order'"


def _create_schema(conn: sqlite3.Connection, policy: str, write: Any) -> None:
    """Create the index tables (every statement idempotent, so processes opening one
    file at once agree), first rebuilding a ``cache_entries`` of an older layout
    (made WITHOUT ROWID, or with rowids not in access order). ``write(conn)`` is a
    write-transaction context manager."""
    conn.executescript(_SCHEMA)
    if conn.execute(_OLD_LAYOUT).fetchone()[0] or conn.execute(_UNORDERED).fetchone()[0]:
        with write(conn):
            _rebuild_entries(conn)
    _twin_update_triggers(conn)
    if policy != "lru":  # LRU order is the rowid's
        cols = ", ".join(POLICY_ORDER[policy])
        conn.execute(f"CREATE INDEX IF NOT EXISTS cache_entries_{policy} ON cache_entries ({cols})")


_CUSTOM_INSERT = "cacheness_insert_"
_CUSTOM_UPDATE = "cacheness_update_"


def _twin_update_triggers(conn: sqlite3.Connection) -> None:
    """Give each custom-metadata insert trigger (see ``_custom_models``) its update twin.

    Versions that overwrote a key with INSERT OR REPLACE registered only insert and
    delete triggers; an overwrite now updates the row in place, which fires neither,
    so a table registered then would keep the rows of the value overwritten.
    """
    found = dict(
        conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
            "AND tbl_name = 'cache_entries' AND name LIKE 'cacheness%'"
        ).fetchall()
    )
    for name, sql in found.items():
        if not name.startswith(_CUSTOM_INSERT):
            continue
        twin = _CUSTOM_UPDATE + name[len(_CUSTOM_INSERT) :]
        if twin in found:
            continue
        twin_sql = (
            sql.replace(name, twin, 1)
            .replace("AFTER INSERT ON", "AFTER UPDATE OF created ON", 1)
            .replace("NEW.key", "OLD.key")
        )
        if "IF NOT EXISTS" not in twin_sql:
            twin_sql = twin_sql.replace("CREATE TRIGGER", "CREATE TRIGGER IF NOT EXISTS", 1)
        conn.execute(twin_sql)


def _rebuild_entries(conn: sqlite3.Connection) -> None:
    """Copy ``cache_entries`` into the current layout, rowids in access order (see
    ``_rowid_at``), in the caller's transaction. The reads waiting in cache_access go
    into the rows first; the table's triggers (custom metadata) and indexes are made
    again on the copy, but for the LRU index the rowid now replaces."""
    without_rowid = conn.execute(_OLD_LAYOUT).fetchone()[0]
    if not without_rowid and not conn.execute(_UNORDERED).fetchone()[0]:
        return  # another process rebuilt it while this one waited for the lock
    kept = [
        r[0]
        for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'cache_entries' "
            "AND type IN ('trigger', 'index') AND sql IS NOT NULL "
            "AND name != 'cache_entries_lru' ORDER BY type = 'trigger'"
        )
    ]
    if without_rowid:
        cols = _ROW_COLS  # that layout held no values
    else:
        cols = f"{_ROW_COLS}, {_HELD_COLS}"
        conn.execute(
            "UPDATE cache_entries SET "
            "hits = hits + (SELECT a.hits FROM cache_access AS a WHERE a.kid = cache_entries.rowid), "
            "accessed = max(accessed, "
            "(SELECT a.accessed FROM cache_access AS a WHERE a.kid = cache_entries.rowid)) "
            "WHERE rowid IN (SELECT kid FROM cache_access)"
        )
    conn.execute("DELETE FROM cache_access")
    conn.execute("DROP TABLE IF EXISTS cache_entries_rebuild")
    conn.execute(_ENTRIES_TABLE.format(name="cache_entries_rebuild"))
    # Ranks, not times: every entry here was accessed before any put after this one.
    conn.execute(
        f"INSERT INTO cache_entries_rebuild (rowid, {cols}) "
        f"SELECT row_number() OVER (ORDER BY accessed, key), {cols} FROM cache_entries"
    )
    conn.execute("DROP TABLE cache_entries")  # and its indexes and triggers
    conn.execute("ALTER TABLE cache_entries_rebuild RENAME TO cache_entries")
    for sql in kept:
        conn.execute(sql)
    if conn.execute(_UNORDERED).fetchone()[0]:
        conn.execute("ALTER TABLE cache_state ADD COLUMN rowid_order INTEGER NOT NULL DEFAULT 1")
    logger.info("rebuilt the cache index table cache_entries in the current layout")


# One encoder, not json.dumps(..., options): that builds a new encoder per call.
_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False).encode
_esc = json.encoder.encode_basestring_ascii


def _dumps_params(params: dict[str, Any]) -> str:
    """``_dumps(params)``; flat str/int/bool/None values (most key parameters) are
    written directly, ~1 µs cheaper per put than the encoder's set-up."""
    parts = []
    for name in sorted(params):
        v = params[name]
        t = type(v)
        if type(name) is not str:
            return _dumps(params)
        if t is str:
            parts.append(f"{_esc(name)}:{_esc(v)}")
        elif t is int:
            parts.append(f"{_esc(name)}:{int.__repr__(v)}")
        elif v is None:
            parts.append(f"{_esc(name)}:null")
        elif t is bool:
            parts.append(f"{_esc(name)}:{'true' if v else 'false'}")
        else:
            return _dumps(params)
    return "{" + ",".join(parts) + "}"


def _row(r: Any) -> IndexRow:
    return IndexRow(
        key=r[0],
        store_key=r[1],
        content_hash=r[2],
        size=r[3],
        created=r[4],
        accessed=r[5],
        hits=r[6],
        expires=r[7],
        key_params=None if r[8] is None else json.loads(r[8]),
        description=r[9],
        metadata=json.loads(r[10]),
    )


def _held_values(r: EntryRecord) -> tuple[Any, ...]:
    return (
        r.data_type,
        r.handler,
        r.codec,
        r.content_hash,
        to_micros(r.created_at),
        dumps_json(r.info),
        r.inline,
    )


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    # Keys starting with prefix sort in [prefix, prefix + U+10FFFF).
    return prefix, prefix + "\U0010ffff"


class SqliteIndex(CacheIndex):
    """The index in a SQLite file (WAL, raw ``sqlite3``), or in memory with ``path=None``.

    One connection per process guarded by a lock: the hot ``lookup`` is one
    primary-key SELECT (a few µs); writes are ``BEGIN IMMEDIATE`` transactions,
    which serialise processes sharing the file.
    """

    name = "sqlite"

    def __init__(self, path: Path | None, generation: Generation, policy: str) -> None:
        super().__init__(generation)
        self.path = path
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False
        self._policy = policy
        self._conn = self._connect()
        self._order = _order_by(policy)

    def _connect(self) -> sqlite3.Connection:
        target = ":memory:" if self.path is None else str(self.path)
        try:
            conn = sqlite3.connect(
                target, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            if self.path is not None:
                enable_wal(conn)
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")  # commits ~7 µs cheaper
            _create_schema(conn, self._policy, self._write)
        except sqlite3.Error as exc:
            raise CacheBackendError(
                f"cannot open the cache index {target}: {exc}", backend=self.name
            ) from exc
        return conn

    def _check(self) -> sqlite3.Connection:
        if self._closed:
            raise CacheBackendError("the cache index is closed", backend=self.name)
        if self._pid != os.getpid():
            # A forked child must not use its parent's connection.
            self._pid = os.getpid()
            self._lock = threading.RLock()
            if self.path is None:
                raise CacheBackendError(
                    "an in-memory cache cannot be used from a forked process", backend=self.name
                )
            # The parent's connection closes first: SQLite keeps lock bookkeeping per
            # process and file, and a new connection beside it would take no locks.
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = self._connect()
        return self._conn

    @contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """A write transaction; SQLITE_BUSY without waiting (WAL checkpoints) is retried."""
        for attempt in range(_LOCK_RETRIES):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if attempt == _LOCK_RETRIES - 1:
                    raise CacheBackendError(
                        f"the cache index {self.path} stayed locked by another process; is a "
                        "process stuck in a write?",
                        backend=self.name,
                    ) from exc
                time.sleep(0.005 * (attempt + 1))
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._check()
            try:
                with self._write(conn):
                    yield conn
            except sqlite3.Error as exc:
                self._forget_reached()
                raise CacheBackendError(
                    f"cache index {self.path or ':memory:'}: {exc}", backend=self.name
                ) from exc
            except BaseException:
                self._forget_reached()
                raise
        self.publish()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            conn = self._check()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise CacheBackendError(
                    f"cache index {self.path or ':memory:'}: {exc}", backend=self.name
                ) from exc

    def _bump(
        self, conn: sqlite3.Connection, entries: int = 0, size: int = 0, gen: int = 1
    ) -> tuple[int, int, int]:
        """Count a write (and its change to the totals); the new (entries, size_bytes,
        generation). ``gen=0`` changes the totals only: a write that alters no existing
        row (a new key) hides nothing from a memory tier, so it need not bump."""
        # An UPDATE then a SELECT: RETURNING costs ~9 µs more per commit here (SQLite 3.40).
        conn.execute(
            "UPDATE cache_state SET generation = generation + ?, entries = entries + ?, "
            "size_bytes = size_bytes + ? WHERE id = 1",
            (gen, entries, size),
        )
        g, n, b = conn.execute(_STATE).fetchone()
        if gen:
            self._reached(g)
        return int(n), int(b), int(g)

    # ---------------------------------------------------------------- reads

    def lookup(self, key: str) -> tuple[str, float | None] | None:
        with self._lock:
            conn = self._conn if self._pid == os.getpid() and not self._closed else self._check()
            try:
                r = conn.execute(
                    "SELECT store_key, expires FROM cache_entries WHERE key = ?", (key,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise CacheBackendError(f"cache index: {exc}", key=key, backend=self.name) from exc
        return None if r is None else (r[0], r[1])

    def row(self, key: str) -> IndexRow | None:
        rows = self._read(f"SELECT {_ROW_SELECT} WHERE e.key = ?", (key,))
        return _row(rows[0]) if rows else None

    def rows(self, prefix: str | None = None) -> list[IndexRow]:
        if prefix:
            lo, hi = _prefix_bounds(prefix)
            found = self._read(
                f"SELECT {_ROW_SELECT} WHERE e.key >= ? AND e.key < ? ORDER BY e.key",
                (lo, hi),
            )
        else:
            found = self._read(f"SELECT {_ROW_SELECT} ORDER BY e.key")
        return [_row(r) for r in found]

    def counters(self) -> dict[str, int]:
        r = self._read(f"SELECT {', '.join(COUNTERS)} FROM cache_state WHERE id = 1")[0]
        return dict(zip(COUNTERS, r, strict=True))

    def store_keys(self) -> set[str]:
        return {r[0] for r in self._read("SELECT store_key FROM cache_entries")}

    # --------------------------------------------------------------- writes

    def _add_content(self, conn: sqlite3.Connection, content_hash: str, size: int) -> int:
        """Reference ``content_hash``; the bytes this adds to the cache (0 when shared)."""
        conn.execute(
            "INSERT INTO cache_contents (content_hash, size, refs) VALUES (?, ?, 1) "
            "ON CONFLICT (content_hash) DO UPDATE SET refs = refs + 1",
            (content_hash, size),
        )
        (refs,) = conn.execute(
            "SELECT refs FROM cache_contents WHERE content_hash = ?", (content_hash,)
        ).fetchone()
        return int(size) if refs == 1 else 0

    def _drop_content(self, conn: sqlite3.Connection, content_hash: str, size: int) -> int:
        """Unreference ``content_hash``; the bytes this frees (0 while still shared)."""
        if not content_hash:
            return int(size)  # an inline value: counted on its own, never shared
        conn.execute(
            "UPDATE cache_contents SET refs = refs - 1 WHERE content_hash = ?", (content_hash,)
        )
        r = conn.execute(
            "SELECT refs, size FROM cache_contents WHERE content_hash = ?", (content_hash,)
        ).fetchone()
        if r is None or r[0] > 0:
            return 0
        conn.execute("DELETE FROM cache_contents WHERE content_hash = ?", (content_hash,))
        return int(r[1])

    def _flush(self, conn: sqlite3.Connection, pending: Pending) -> None:
        access, counts = pending
        if len(access) >= _MANY_READS:
            # One statement for the batch: the rows go into a temporary table first
            # (cheap), then SQLite adds them up in a single statement, with the GIL
            # released throughout. executemany takes the GIL back between rows, and a
            # write-behind then slows every get running beside it.
            conn.execute(_READS_TABLE)
            conn.executemany(
                "INSERT INTO temp.cache_reads VALUES (?, ?, ?)",
                [(k, int(v[0]), v[1]) for k, v in access.items()],
            )
            conn.execute(_APPLY_READS)
            conn.execute("DELETE FROM temp.cache_reads")
            access.clear()
        elif access:
            conn.executemany(_APPLY_READ, [(int(v[0]), v[1], k) for k, v in access.items()])
            access.clear()
        if any(counts.values()):
            conn.execute(
                "UPDATE cache_state SET hits = hits + ?, misses = misses + ? WHERE id = 1",
                (counts.get("hits", 0), counts.get("misses", 0)),
            )
            counts.clear()

    def flush(self, pending: Pending) -> None:
        if not pending[0] and not any(pending[1].values()):
            return
        with self._txn() as conn:
            self._flush(conn, pending)

    def put(
        self,
        row: IndexRow,
        limits: Limits,
        take_pending: Callable[[], Pending],
        extra: Callable[[sqlite3.Connection], None] | None = None,
    ) -> PutResult:
        """See :meth:`CacheIndex.put`; ``extra(connection)`` runs in the same transaction
        right after the row is written (custom-metadata rows)."""
        # The store keeps inline values per entry (no sharing): each counts alone.
        content_hash = "" if row.inline else row.content_hash
        values = (
            _rowid_at(row.accessed),
            row.key,
            row.store_key,
            content_hash,
            row.size,
            row.created,
            row.accessed,
            row.hits,
            row.expires,
            None if row.key_params is None else _dumps_params(row.key_params),
            row.description,
            "{}" if not row.metadata else _dumps(row.metadata),
            *(_NOT_HELD if row.held is None else _held_values(row.held)),
        )
        # The reads counted in memory wait for their own flush unless this put evicts:
        # written here, each put would rewrite the rows of the few reads before it
        # inside the write lock (~8 µs each), instead of one row per key and flush.
        with self._txn() as conn:
            old = None
            try:
                # A new key (the usual put) needs no look at the old row first.
                conn.execute(_INSERT_ROW, values)
            except sqlite3.IntegrityError as exc:
                try:
                    if not _taken(exc):
                        raise
                    # Another entry has this microsecond: SQLite's next rowid instead.
                    conn.execute(_INSERT_ROW, (None, *values[1:]))
                except sqlite3.IntegrityError:
                    old = conn.execute(_OLD_VALUE, (row.key,)).fetchone()
                    # In place, not INSERT OR REPLACE: the row keeps its rowid, so neither
                    # the key index nor the table's last page is rewritten (~19 µs of an
                    # overwrite).
                    conn.execute(
                        _OVERWRITE_ROW,
                        (*values[2:6], *values[7:], row.key),
                    )
                    conn.execute(_RESET_ACCESS, (old[3], row.accessed))
            d_entries, d_size = 1, 0
            if old is not None:
                d_entries = 0
                d_size -= self._drop_content(conn, old[1], old[2])
            if content_hash:
                d_size += self._add_content(conn, content_hash, row.size)
            else:
                d_size += row.size
            if extra is not None:
                extra(conn)
            entries, size, gen = self._bump(conn, d_entries, d_size, 0 if old is None else 1)
            result = PutResult(None if old is None else old[0], [], False, gen)
            self._evict(conn, row.key, limits, result, entries, size, take_pending)
        return result

    def _evict(
        self,
        conn: sqlite3.Connection,
        keep: str,
        limits: Limits,
        result: PutResult,
        entries: int,
        size: int,
        take_pending: Callable[[], Pending],
    ) -> None:
        over_n = 0 if limits.max_entries is None else entries - limits.max_entries
        over_b = 0 if limits.max_bytes is None else size - limits.max_bytes
        evicted = freed_total = 0
        if over_n <= 0 and over_b <= 0:
            return  # the usual put
        pending = take_pending()  # the victims are chosen by access data that counts them
        if pending[0] or any(pending[1].values()):
            self._flush(conn, pending)
        # Each batch is an indexed range scan from the policy's first victim by the
        # access data in the rows. A candidate read since (a cache_access row) may
        # belong later in the order: its reads are moved into its row, and the scan
        # starts again. Every entry not yet scanned is at least as late as the
        # candidate (reads only move an entry later), so one without reads is the
        # policy's victim. FIFO orders by creation, which reads never change.
        select = (
            "SELECT e.rowid, e.store_key, e.content_hash, e.size, a.hits, a.accessed, e.accessed "
            "FROM cache_entries AS e LEFT JOIN cache_access AS a ON a.kid = e.rowid "
            f"WHERE e.key != ? ORDER BY {self._order} LIMIT ?"
        )
        moves = self._policy != "fifo"
        while over_n > 0 or over_b > 0:
            batch = conn.execute(select, (keep, max(over_n, 8))).fetchall()
            if not batch:
                result.oversized = over_b > 0
                break
            for i, (rowid, store_key, content_hash, size, hits, *_) in enumerate(batch):
                if over_n <= 0 and over_b <= 0:
                    break
                if hits is not None:
                    if moves:
                        self._move_reads(conn, [r for r in batch[i:] if r[4] is not None])
                        break
                    conn.execute(_DROP_ACCESS, (rowid,))  # a FIFO victim's reads
                conn.execute("DELETE FROM cache_entries WHERE rowid = ?", (rowid,))
                freed = self._drop_content(conn, content_hash, size)
                over_n -= 1
                over_b -= freed
                evicted += 1
                freed_total += freed
                result.victims.append(store_key)
        if evicted:
            conn.execute(
                "UPDATE cache_state SET evictions = evictions + ?, entries = entries - ?, "
                "size_bytes = size_bytes - ?, generation = generation + 1 WHERE id = 1",
                (evicted, evicted, freed_total),
            )
            (gen,) = conn.execute("SELECT generation FROM cache_state WHERE id = 1").fetchone()
            self._reached(gen)
            result.generation = int(gen)

    def _move_reads(self, conn: sqlite3.Connection, rows: list[Any]) -> None:
        """Add the reads waiting in cache_access to these ``_evict`` candidates' rows
        (``(rowid, ..., hits, accessed, row's accessed)``); each row's rowid follows
        its new access time (see ``_rowid_at``)."""
        conn.executemany(_DROP_ACCESS, [(r[0],) for r in rows])
        for rowid, *_, hits, at, row_at in rows:
            at = max(at, row_at)
            target = _rowid_at(at)
            if target is not None and target <= rowid:
                target = rowid + 1  # read in the microsecond it was put: after its peers
            for attempt in range(8):
                try:
                    conn.execute(
                        "UPDATE cache_entries SET rowid = coalesce(?, "
                        "(SELECT max(rowid) FROM cache_entries) + 1), hits = hits + ?, "
                        "accessed = ? WHERE rowid = ?",
                        (target, hits, at, rowid),
                    )
                    break
                except sqlite3.IntegrityError as exc:
                    if not _taken(exc):
                        raise
                    # The next microsecond, then (an unusual clock) the last place.
                    target = None if target is None or attempt > 5 else target + 1

    def replace_value(
        self,
        key: str,
        store_key: str,
        content_hash: str,
        size: int,
        now: float,
        limits: Limits,
        take_pending: Callable[[], Pending],
    ) -> PutResult | None:
        with self._txn() as conn:
            old = conn.execute(_OLD_VALUE, (key,)).fetchone()
            if old is None:
                return None
            d_size = self._add_content(conn, content_hash, size)
            d_size -= self._drop_content(conn, old[1], old[2])
            conn.execute(
                "UPDATE cache_entries SET store_key = ?, content_hash = ?, size = ?, "
                "value_type = NULL, value_handler = NULL, value_codec = NULL, "
                "value_hash = NULL, value_created_us = NULL, value_info = NULL, value = NULL "
                "WHERE rowid = ?",
                (store_key, content_hash, size, old[3]),
            )
            conn.execute(_APPLY_READ, (0, now, key))  # accessed now, as by a read
            entries, total, gen = self._bump(conn, 0, d_size)
            result = PutResult(str(old[0]), [], False, gen)
            self._evict(conn, key, limits, result, entries, total, take_pending)
        return result

    def remove(
        self, key: str, store_key: str | None = None, counter: str | None = None
    ) -> str | None:
        with self._txn() as conn:
            old = conn.execute(_OLD_VALUE, (key,)).fetchone()
            if old is None or (store_key is not None and old[0] != store_key):
                return None
            conn.execute("DELETE FROM cache_entries WHERE rowid = ?", (old[3],))
            conn.execute(_DROP_ACCESS, (old[3],))
            freed = self._drop_content(conn, old[1], old[2])
            self._bump(conn, -1, -freed)
            if counter is not None:
                assert counter in ("expired", "evictions")
                conn.execute(f"UPDATE cache_state SET {counter} = {counter} + 1 WHERE id = 1")
            return str(old[0])

    def touch(self, key: str, expires: float | None, now: float) -> bool:
        with self._txn() as conn:
            n = conn.execute(
                "UPDATE cache_entries SET expires = ? WHERE key = ?", (expires, key)
            ).rowcount
            if n:
                conn.execute(_APPLY_READ, (0, now, key))  # accessed now, as by a read
                self._bump(conn)
            return bool(n)

    def sweep_expired(self, now: float) -> list[str]:
        with self._txn() as conn:
            found = conn.execute(
                "SELECT rowid, store_key, content_hash, size FROM cache_entries "
                "WHERE expires IS NOT NULL AND expires <= ?",
                (now,),
            ).fetchall()
            freed = 0
            for rowid, _, content_hash, size in found:
                conn.execute("DELETE FROM cache_entries WHERE rowid = ?", (rowid,))
                conn.execute(_DROP_ACCESS, (rowid,))
                freed += self._drop_content(conn, content_hash, size)
            # Reads left by a process that deleted rows without this table's upkeep.
            conn.execute(
                "DELETE FROM cache_access WHERE kid NOT IN (SELECT rowid FROM cache_entries)"
            )
            if found:
                conn.execute(
                    "UPDATE cache_state SET expired = expired + ? WHERE id = 1", (len(found),)
                )
                self._bump(conn, -len(found), -freed)
        return [r[1] for r in found]

    def clear(self, prefix: str | None = None) -> list[str]:
        with self._txn() as conn:
            if prefix:
                lo, hi = _prefix_bounds(prefix)
                found = conn.execute(
                    "SELECT rowid, store_key, content_hash, size FROM cache_entries "
                    "WHERE key >= ? AND key < ?",
                    (lo, hi),
                ).fetchall()
                freed = 0
                for rowid, _, content_hash, size in found:
                    conn.execute("DELETE FROM cache_entries WHERE rowid = ?", (rowid,))
                    conn.execute(_DROP_ACCESS, (rowid,))
                    freed += self._drop_content(conn, content_hash, size)
                self._bump(conn, -len(found), -freed)
            else:
                found = conn.execute(
                    "SELECT key, store_key, content_hash, size FROM cache_entries"
                ).fetchall()
                conn.execute("DELETE FROM cache_entries")
                conn.execute("DELETE FROM cache_access")
                conn.execute("DELETE FROM cache_contents")
                conn.execute("UPDATE cache_state SET entries = 0, size_bytes = 0 WHERE id = 1")
                self._bump(conn)
        return [r[1] for r in found]

    def acquire_lease(self, name: str, owner: str, ttl: float, now: float) -> bool:
        with self._txn() as conn:
            # One statement: the upsert changes nothing (rowcount 0) while another
            # owner's lease is unexpired.
            return bool(
                conn.execute(
                    "INSERT INTO cache_leases (name, owner, expires) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                    "expires = excluded.expires "
                    "WHERE cache_leases.owner = excluded.owner OR cache_leases.expires <= ?",
                    (name, owner, now + ttl, now),
                ).rowcount
            )

    def release_lease(self, name: str, owner: str) -> bool:
        with self._txn() as conn:
            return bool(
                conn.execute(
                    "DELETE FROM cache_leases WHERE name = ? AND owner = ?", (name, owner)
                ).rowcount
            )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._pid == os.getpid():
                self._conn.close()
        super().close()
