"""The cache index in any database SQLAlchemy reaches (``metadata_backend="postgresql+psycopg://..."``).

Same semantics as :class:`~cacheness.policy.SqliteIndex` — one row per cache
key, counters changed in the same transaction as the rows they count,
eviction inside ``put``, leases, a generation number — written with
SQLAlchemy Core so a team can share one cache index on PostgreSQL.

Every write transaction starts by locking the one row of ``cache_state``
(``SELECT ... FOR UPDATE``; ``BEGIN IMMEDIATE`` on SQLite), so writers from
every process and machine are serialised exactly like SQLite's writers, and
eviction and the counters never race. Reads run in autocommit.

The generation lives in the database only: there is no shared memory across
machines, so :class:`DbGeneration` reads it from ``cache_state`` (one
primary-key lookup) whenever the memory tier asks.

Custom-metadata tables listed in ``cache_custom_tables`` lose the rows of
every entry this index removes, in the removing transaction.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cacheness.policy._base import (
    COUNTERS,
    POLICY_ORDER,
    ROW_FIELDS,
    CacheIndex,
    Generation,
    IndexRow,
    Limits,
    Pending,
    PutResult,
)
from cacheness.storage.errors import CacheBackendError, CacheConfigError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Table

__all__ = ["CUSTOM_TABLES", "DbGeneration", "SqlAlchemyIndex", "index_tables"]

logger = logging.getLogger(__name__)

#: Name of the table listing the custom-metadata tables (name, table_name, link_column).
CUSTOM_TABLES = "cache_custom_tables"
# Any constant: the advisory lock that serialises table creation on PostgreSQL.
_PG_SETUP_LOCK = 0x63616369
_STATE_COLS = ("generation", *COUNTERS)
_ROW_COLS = ROW_FIELDS


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)


def index_tables(md: Any) -> dict[str, Table]:
    """The index's tables, the same names and columns as the SQLite index."""
    import sqlalchemy as sa

    # Keys are any str: no length cap, except where the dialect needs one to index it.
    key_type = sa.Text().with_variant(sa.String(768), "mysql", "mariadb")
    real = sa.Float(precision=53)
    big = sa.BigInteger()
    entries = sa.Table(
        "cache_entries",
        md,
        sa.Column("key", key_type, primary_key=True),
        sa.Column("store_key", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(200), nullable=False),
        sa.Column("size", big, nullable=False),
        sa.Column("created", real, nullable=False),
        sa.Column("accessed", real, nullable=False),
        sa.Column("hits", big, nullable=False, default=0),
        sa.Column("expires", real, nullable=True, index=True),
        sa.Column("key_params", sa.Text),
        sa.Column("description", sa.Text),
        sa.Column("metadata", sa.Text, nullable=False),
    )
    contents = sa.Table(
        "cache_contents",
        md,
        sa.Column("content_hash", sa.String(200), primary_key=True),
        sa.Column("size", big, nullable=False),
        sa.Column("refs", big, nullable=False),
    )
    state = sa.Table(
        "cache_state",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        *[sa.Column(c, big, nullable=False, default=0) for c in _STATE_COLS],
    )
    leases = sa.Table(
        "cache_leases",
        md,
        sa.Column("name", sa.String(400), primary_key=True),
        sa.Column("owner", sa.String(400), nullable=False),
        sa.Column("expires", real, nullable=False),
    )
    custom = sa.Table(
        CUSTOM_TABLES,
        md,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("table_name", sa.String(200), nullable=False),
        sa.Column("link_column", sa.String(200), nullable=False),
    )
    return {
        "entries": entries,
        "contents": contents,
        "state": state,
        "leases": leases,
        "custom": custom,
    }


def sqlite_write_events(engine: Engine) -> None:
    """pysqlite's own transaction handling cannot take the write lock up front; take it
    ourselves (``BEGIN IMMEDIATE`` on connections with ``cacheness_write=True``)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA busy_timeout = 30000")
            if engine.url.database not in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("cacheness_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class DbGeneration(Generation):
    """The generation as stored in the index's database (no shared memory across machines)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.index: SqlAlchemyIndex | None = None

    def read(self) -> int:
        if self.index is None:
            return self._value
        return self.index.read_generation()

    def write(self, value: int) -> None:
        self._value = value


class _Txn:
    """One write transaction: the connection and the locked ``cache_state`` row."""

    __slots__ = ("changed", "conn", "state")

    def __init__(self, conn: Connection, state: dict[str, int]) -> None:
        self.conn = conn
        self.state = state
        self.changed = False

    def add(self, name: str, delta: int) -> None:
        if delta:
            self.state[name] += delta
            self.changed = True


class SqlAlchemyIndex(CacheIndex):
    """The cache index in a SQLAlchemy database (PostgreSQL for teams; any SQLAlchemy URL)."""

    name = "sqlalchemy"

    def __init__(self, url: str, policy: str, **engine_options: Any) -> None:
        gen = DbGeneration()
        super().__init__(gen)
        try:
            import sqlalchemy as sa
        except ImportError as exc:  # pragma: no cover - sqlalchemy is a dependency
            raise CacheConfigError(
                "a SQLAlchemy URL as metadata_backend needs SQLAlchemy: pip install sqlalchemy"
            ) from exc
        self._sa = sa
        self.url = url
        try:
            self.engine: Engine = sa.create_engine(url, **engine_options)
        except (ImportError, sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
            hint = " (pip install 'cacheness-storage[postgres]')" if "postgres" in url else ""
            raise CacheConfigError(
                f"cannot use metadata_backend={_safe_url(url)!r}: {exc}{hint}"
            ) from exc
        self.sqlite = self.engine.dialect.name == "sqlite"
        if self.sqlite:
            sqlite_write_events(self.engine)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._md = sa.MetaData()
        t = index_tables(self._md)
        self.entries, self.contents, self.state = t["entries"], t["contents"], t["state"]
        self.leases, self.custom = t["leases"], t["custom"]
        self._policy = policy
        self._order = [self.entries.c[c] for c in POLICY_ORDER[policy]]
        self._pid = os.getpid()
        self._closed = False
        self._lock = threading.Lock()
        try:
            self._setup()
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise CacheBackendError(
                f"cannot prepare the cache index at {_safe_url(url)!r}: {exc}", backend=self.name
            ) from exc
        gen.index = self

    # ---------------------------------------------------------------- set-up

    def _setup(self) -> None:
        """Create the tables, the policy's index and the state row; safe when several
        processes start at once."""
        sa = self._sa
        postgres = self.engine.dialect.name == "postgresql"
        cols = POLICY_ORDER[self._policy]
        policy_index = sa.Index(f"cache_entries_{self._policy}", *[self.entries.c[c] for c in cols])
        for attempt in range(5):
            try:
                with self._writer() as conn:
                    if postgres:
                        # DDL is transactional there: the lock is held until COMMIT.
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SETUP_LOCK}
                        )
                    self._md.create_all(conn)
                    policy_index.create(conn, checkfirst=True)
                    st = self.state
                    if conn.execute(sa.select(st.c.id).where(st.c.id == 1)).first() is None:
                        conn.execute(st.insert().values(id=1, **dict.fromkeys(_STATE_COLS, 0)))
                return
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
                # Another process created the same objects between our check and our
                # CREATE (databases without transactional DDL); the next attempt sees them.
                if attempt == 4:
                    raise
                logger.debug("cache index set-up raced another process; retrying")
                time.sleep(0.05 * (attempt + 1))

    def _engine(self) -> Engine:
        if self._closed:
            raise CacheBackendError("the cache index is closed", backend=self.name)
        if self._pid != os.getpid():
            # A forked child must not use its parent's pooled connections.
            self._pid = os.getpid()
            self.engine.dispose(close=False)
        return self.engine

    @contextmanager
    def _writer(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if self.sqlite:
                conn = conn.execution_options(cacheness_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _txn(self) -> Iterator[_Txn]:
        """A write transaction that holds the ``cache_state`` row lock throughout."""
        sa = self._sa
        engine = self._engine()
        try:
            with engine.connect() as conn:
                if self.sqlite:
                    conn = conn.execution_options(cacheness_write=True)
                with conn.begin():
                    st = self.state
                    got = conn.execute(
                        sa.select(*[st.c[c] for c in _STATE_COLS])
                        .where(st.c.id == 1)
                        .with_for_update()
                    ).first()
                    if got is None:
                        raise CacheBackendError(
                            f"the cache index at {_safe_url(self.url)!r} lost its cache_state "
                            "row; re-open the cache (that recreates it)",
                            backend=self.name,
                        )
                    txn = _Txn(conn, dict(zip(_STATE_COLS, (int(v) for v in got), strict=True)))
                    yield txn
                    if txn.changed:
                        conn.execute(
                            st.update()
                            .where(st.c.id == 1)
                            .values(**{c: txn.state[c] for c in _STATE_COLS})
                        )
        except sa.exc.SQLAlchemyError as exc:
            raise CacheBackendError(
                f"cache index at {_safe_url(self.url)!r}: {exc}", backend=self.name
            ) from exc
        if txn.changed:
            self.generation.write(txn.state["generation"])

    def _read(self, stmt: Any, key: str | None = None) -> list[Any]:
        sa = self._sa
        self._engine()
        try:
            with self._autocommit.connect() as conn:
                return list(conn.execute(stmt).all())
        except sa.exc.SQLAlchemyError as exc:
            raise CacheBackendError(
                f"cache index at {_safe_url(self.url)!r}: {exc}", key=key, backend=self.name
            ) from exc

    def _bump(self, txn: _Txn, entries: int = 0, size: int = 0) -> None:
        txn.add("generation", 1)
        txn.add("entries", entries)
        txn.add("size_bytes", size)

    # ----------------------------------------------------------------- reads

    def read_generation(self) -> int:
        st = self.state
        rows = self._read(self._sa.select(st.c.generation).where(st.c.id == 1))
        return int(rows[0][0]) if rows else 0

    def lookup(self, key: str) -> tuple[str, float | None] | None:
        e = self.entries
        rows = self._read(self._sa.select(e.c.store_key, e.c.expires).where(e.c.key == key), key)
        return (rows[0][0], rows[0][1]) if rows else None

    def _select_rows(self) -> Any:
        return self._sa.select(*[self.entries.c[c] for c in _ROW_COLS])

    def row(self, key: str) -> IndexRow | None:
        rows = self._read(self._select_rows().where(self.entries.c.key == key), key)
        return _to_row(rows[0]) if rows else None

    def rows(self, prefix: str | None = None) -> list[IndexRow]:
        e = self.entries
        stmt = self._select_rows()
        if prefix:
            stmt = stmt.where(e.c.key.startswith(prefix, autoescape=True))
        # Sorted in Python: the database's collation need not be code-point order.
        return sorted((_to_row(r) for r in self._read(stmt)), key=lambda r: r.key)

    def counters(self) -> dict[str, int]:
        st = self.state
        r = self._read(self._sa.select(*[st.c[c] for c in COUNTERS]).where(st.c.id == 1))[0]
        return {c: int(v) for c, v in zip(COUNTERS, r, strict=True)}

    def store_keys(self) -> set[str]:
        return {r[0] for r in self._read(self._sa.select(self.entries.c.store_key))}

    # ---------------------------------------------------------------- writes

    def _add_content(self, conn: Connection, content_hash: str, size: int) -> int:
        """Reference ``content_hash``; the bytes this adds (0 when already shared)."""
        c = self.contents
        done = conn.execute(
            c.update().where(c.c.content_hash == content_hash).values(refs=c.c.refs + 1)
        )
        if done.rowcount:
            return 0
        conn.execute(c.insert().values(content_hash=content_hash, size=size, refs=1))
        return int(size)

    def _drop_content(self, conn: Connection, content_hash: str) -> int:
        """Unreference ``content_hash``; the bytes this frees (0 while still shared)."""
        sa, c = self._sa, self.contents
        r = conn.execute(
            sa.select(c.c.refs, c.c.size).where(c.c.content_hash == content_hash)
        ).first()
        if r is None:
            return 0
        if r[0] > 1:
            conn.execute(
                c.update().where(c.c.content_hash == content_hash).values(refs=c.c.refs - 1)
            )
            return 0
        conn.execute(c.delete().where(c.c.content_hash == content_hash))
        return int(r[1])

    def _drop_custom(self, conn: Connection, keys: Sequence[str] | None) -> None:
        """Delete the custom-metadata rows of ``keys`` (None: of every entry)."""
        sa = self._sa
        tables = conn.execute(sa.select(self.custom.c.table_name, self.custom.c.link_column)).all()
        if not tables or (keys is not None and not keys):
            return
        for table_name, link in tables:
            t = sa.table(table_name, sa.column(link))
            if keys is None:
                conn.execute(t.delete())
                continue
            for i in range(0, len(keys), 500):
                conn.execute(t.delete().where(t.c[link].in_(list(keys[i : i + 500]))))

    def _flush(self, txn: _Txn, pending: Pending) -> None:
        sa, e = self._sa, self.entries
        access, counts = pending
        if access:
            txn.conn.execute(
                e.update()
                .where(e.c.key == sa.bindparam("k"))
                .values(
                    hits=e.c.hits + sa.bindparam("h"),
                    accessed=sa.case(
                        (e.c.accessed < sa.bindparam("a"), sa.bindparam("a")),
                        else_=e.c.accessed,
                    ),
                ),
                [{"k": k, "h": int(v[0]), "a": v[1]} for k, v in access.items()],
            )
            access.clear()
        if any(counts.values()):
            txn.add("hits", counts.get("hits", 0))
            txn.add("misses", counts.get("misses", 0))
            counts.clear()

    def flush(self, pending: Pending) -> None:
        if not pending[0] and not any(pending[1].values()):
            return
        with self._txn() as txn:
            self._flush(txn, pending)

    def put(
        self,
        row: IndexRow,
        limits: Limits,
        take_pending: Callable[[], Pending],
        extra: Callable[[Connection], None] | None = None,
    ) -> PutResult:
        """Insert or replace ``row``; ``extra(connection)`` then runs in the same
        transaction (custom-metadata rows), before eviction."""
        sa, e = self._sa, self.entries
        values = {
            "key": row.key,
            "store_key": row.store_key,
            "content_hash": row.content_hash,
            "size": row.size,
            "created": row.created,
            "accessed": row.accessed,
            "hits": row.hits,
            "expires": row.expires,
            "key_params": None if row.key_params is None else _dumps(row.key_params),
            "description": row.description,
            "metadata": _dumps(row.metadata),
        }
        with self._txn() as txn:
            conn = txn.conn
            self._flush(txn, take_pending())
            old = conn.execute(
                sa.select(e.c.store_key, e.c.content_hash).where(e.c.key == row.key)
            ).first()
            d_entries, d_size = 1, 0
            if old is not None:
                d_entries = 0
                d_size -= self._drop_content(conn, old[1])
                self._drop_custom(conn, [row.key])
                conn.execute(e.update().where(e.c.key == row.key).values(**values))
            else:
                conn.execute(e.insert().values(**values))
            d_size += self._add_content(conn, row.content_hash, row.size)
            self._bump(txn, d_entries, d_size)
            if extra is not None:
                extra(conn)
            result = PutResult(replaced=None if old is None else old[0], victims=[])
            self._evict(txn, row.key, limits, result)
        return result

    def _evict(self, txn: _Txn, keep: str, limits: Limits, result: PutResult) -> None:
        sa, e, conn = self._sa, self.entries, txn.conn
        entries, size = txn.state["entries"], txn.state["size_bytes"]
        over_n = 0 if limits.max_entries is None else entries - limits.max_entries
        over_b = 0 if limits.max_bytes is None else size - limits.max_bytes
        evicted = freed_total = 0
        gone: list[str] = []
        while over_n > 0 or over_b > 0:
            # Each batch starts at the policy's first victim (deleted rows are gone).
            batch = conn.execute(
                sa.select(e.c.key, e.c.store_key, e.c.content_hash)
                .where(e.c.key != keep)
                .order_by(*self._order)
                .limit(max(over_n, 8 if over_b > 0 else 1))
            ).all()
            if not batch:
                result.oversized = over_b > 0
                break
            for key, store_key, content_hash in batch:
                if over_n <= 0 and over_b <= 0:
                    break
                conn.execute(e.delete().where(e.c.key == key))
                freed = self._drop_content(conn, content_hash)
                over_n -= 1
                over_b -= freed
                evicted += 1
                freed_total += freed
                gone.append(key)
                result.victims.append(store_key)
        if evicted:
            self._drop_custom(conn, gone)
            txn.add("evictions", evicted)
            txn.add("entries", -evicted)
            txn.add("size_bytes", -freed_total)

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
        sa, e = self._sa, self.entries
        with self._txn() as txn:
            conn = txn.conn
            old = conn.execute(
                sa.select(e.c.store_key, e.c.content_hash).where(e.c.key == key)
            ).first()
            if old is None:
                return None
            self._flush(txn, take_pending())
            d_size = self._add_content(conn, content_hash, size)
            d_size -= self._drop_content(conn, old[1])
            conn.execute(
                e.update()
                .where(e.c.key == key)
                .values(store_key=store_key, content_hash=content_hash, size=size, accessed=now)
            )
            self._bump(txn, 0, d_size)
            result = PutResult(replaced=str(old[0]), victims=[])
            self._evict(txn, key, limits, result)
        return result

    def remove(
        self, key: str, store_key: str | None = None, counter: str | None = None
    ) -> str | None:
        sa, e = self._sa, self.entries
        with self._txn() as txn:
            conn = txn.conn
            old = conn.execute(
                sa.select(e.c.store_key, e.c.content_hash).where(e.c.key == key)
            ).first()
            if old is None or (store_key is not None and old[0] != store_key):
                return None
            conn.execute(e.delete().where(e.c.key == key))
            self._drop_custom(conn, [key])
            freed = self._drop_content(conn, old[1])
            self._bump(txn, -1, -freed)
            if counter is not None:
                assert counter in ("expired", "evictions")
                txn.add(counter, 1)
            return str(old[0])

    def touch(self, key: str, expires: float | None, now: float) -> bool:
        sa, e = self._sa, self.entries
        with self._txn() as txn:
            n = txn.conn.execute(
                e.update()
                .where(e.c.key == key)
                .values(
                    expires=expires,
                    accessed=sa.case((e.c.accessed < now, now), else_=e.c.accessed),
                )
            ).rowcount
            if n:
                self._bump(txn)
            return bool(n)

    def _remove_rows(self, txn: _Txn, found: Sequence[Any]) -> int:
        e, conn = self.entries, txn.conn
        keys = [r[0] for r in found]
        for i in range(0, len(keys), 500):
            conn.execute(e.delete().where(e.c.key.in_(keys[i : i + 500])))
        self._drop_custom(conn, keys)
        return sum(self._drop_content(conn, r[2]) for r in found)

    def sweep_expired(self, now: float) -> list[str]:
        sa, e = self._sa, self.entries
        with self._txn() as txn:
            found = txn.conn.execute(
                sa.select(e.c.key, e.c.store_key, e.c.content_hash).where(
                    e.c.expires.is_not(None), e.c.expires <= now
                )
            ).all()
            if found:
                freed = self._remove_rows(txn, found)
                txn.add("expired", len(found))
                self._bump(txn, -len(found), -freed)
        return [r[1] for r in found]

    def clear(self, prefix: str | None = None) -> list[str]:
        sa, e = self._sa, self.entries
        with self._txn() as txn:
            conn = txn.conn
            stmt = sa.select(e.c.key, e.c.store_key, e.c.content_hash)
            if prefix:
                found = conn.execute(stmt.where(e.c.key.startswith(prefix, autoescape=True))).all()
                freed = self._remove_rows(txn, found)
                self._bump(txn, -len(found), -freed)
            else:
                found = conn.execute(stmt).all()
                conn.execute(e.delete())
                conn.execute(self.contents.delete())
                self._drop_custom(conn, None)
                txn.state["entries"] = txn.state["size_bytes"] = 0
                self._bump(txn)
        return [r[1] for r in found]

    def acquire_lease(self, name: str, owner: str, ttl: float, now: float) -> bool:
        sa, t = self._sa, self.leases
        with self._txn() as txn:
            conn = txn.conn
            r = conn.execute(sa.select(t.c.owner, t.c.expires).where(t.c.name == name)).first()
            if r is not None and r[0] != owner and r[1] > now:
                return False
            if r is None:
                conn.execute(t.insert().values(name=name, owner=owner, expires=now + ttl))
            else:
                conn.execute(
                    t.update().where(t.c.name == name).values(owner=owner, expires=now + ttl)
                )
            return True

    def release_lease(self, name: str, owner: str) -> bool:
        t = self.leases
        with self._txn() as txn:
            done = txn.conn.execute(t.delete().where(t.c.name == name, t.c.owner == owner))
            return bool(done.rowcount)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._pid == os.getpid():
            self.engine.dispose()
        else:
            self.engine.dispose(close=False)
        super().close()


def _to_row(r: Any) -> IndexRow:
    return IndexRow(
        key=r[0],
        store_key=r[1],
        content_hash=r[2],
        size=int(r[3]),
        created=float(r[4]),
        accessed=float(r[5]),
        hits=int(r[6]),
        expires=None if r[7] is None else float(r[7]),
        key_params=None if r[8] is None else json.loads(r[8]),
        description=r[9],
        metadata=json.loads(r[10]),
    )


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]
