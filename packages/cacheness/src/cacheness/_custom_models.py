"""Custom metadata models: typed, queryable SQL rows linked to cache entries.

A model subclasses :class:`CustomMetadataBase` (a SQLAlchemy declarative
base whose ``cache_key`` column links a row to its cache entry, plus an
``id`` primary key unless the model declares its own), sets
``__tablename__`` and is registered under a name::

    @custom_metadata_model("ml_experiments")
    class MLExperiment(CustomMetadataBase):
        __tablename__ = "ml_experiments"
        model_type: Mapped[str] = mapped_column(String(50))
        accuracy: Mapped[float]

The table is created (and columns the database lacks are added) the first
time a cache uses the name. Rows are written in the transaction that
writes the entry's index row, and removed in every transaction that removes
the entry: on SQLite by triggers on ``cache_entries`` (so a process that
never imported the model removes them too); on other databases by the
index, which deletes from every table listed in ``cache_custom_tables``.

This module imports SQLAlchemy; ``cacheness`` loads it only on first use.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cacheness.policy import CacheIndex, SqliteIndex
from cacheness.policy._sqlalchemy import (
    CUSTOM_TABLES,
    SqlAlchemyIndex,
    index_tables,
    sqlite_write_events,
)
from cacheness.storage.errors import CacheBackendError, CacheConfigError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Table
    from sqlalchemy.orm import Query

__all__ = [
    "LINK_COLUMN",
    "CustomMetadataBase",
    "CustomStore",
    "custom_metadata_model",
    "registered_models",
]

logger = logging.getLogger(__name__)

#: The column of every custom-metadata table that holds the entry's cache key.
LINK_COLUMN = "cache_key"
SUPPORTED = (
    "metadata_backend='sqlite' (the default) or a SQLAlchemy URL such as "
    "'postgresql+psycopg://user@host/db'"
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,199}$")
_PG_DDL_LOCK = 0x6363_6D64
M = TypeVar("M", bound=type)

_registry: dict[str, type[CustomMetadataBase]] = {}
_registry_lock = threading.Lock()


class _Base(DeclarativeBase):
    pass


class CustomMetadataBase(_Base):
    """Base class of custom-metadata models.

    Provides ``cache_key`` (the link to the cache entry; set by ``put``) and an
    integer ``id`` primary key; a subclass sets ``__tablename__`` and adds its
    columns, then registers itself with :func:`custom_metadata_model`.
    """

    __abstract__ = True

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    cache_key: Mapped[str] = mapped_column(
        sa.Text().with_variant(sa.String(768), "mysql", "mariadb"), nullable=False, index=True
    )


def custom_metadata_model(name: str) -> Callable[[M], M]:
    """Register a :class:`CustomMetadataBase` subclass as the custom metadata ``name``.

    A model that cannot be linked to cache entries is rejected here, with a
    message that says what to add. Registering the same class again is a no-op;
    another class under a taken name replaces it (with a log line), so a
    re-imported module keeps working.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise CacheConfigError(
            f"custom metadata name must be a str of letters, digits, '_', '.' or '-' "
            f"(at most 200), starting with a letter or '_'; not {name!r}"
        )

    def register(model: M) -> M:
        _check_model(name, model)
        with _registry_lock:
            old = _registry.get(name)
            if old is not None and old is not model:
                logger.info("custom metadata %r now uses %s", name, model.__qualname__)
            _registry[name] = model
        return model

    return register


def _check_model(name: str, model: Any) -> None:
    what = f"custom metadata model {getattr(model, '__qualname__', model)!r} (for {name!r})"
    if not isinstance(model, type):
        raise CacheConfigError(f"{what}: @custom_metadata_model decorates a class")
    if not issubclass(model, CustomMetadataBase):
        raise CacheConfigError(
            f"{what} does not subclass CustomMetadataBase: declare it as "
            f"'class {model.__name__}(CustomMetadataBase)' (from cacheness import "
            f"CustomMetadataBase), which adds the {LINK_COLUMN!r} column linking rows to entries"
        )
    table = getattr(model, "__table__", None)
    if table is None:
        raise CacheConfigError(
            f"{what} has no table: set __tablename__ = '...' in the class (an abstract "
            "model cannot be registered)"
        )
    col = table.c.get(LINK_COLUMN)
    if col is None or not isinstance(col.type, sa.String):
        raise CacheConfigError(
            f"{what}: its table {table.name!r} lacks the text column {LINK_COLUMN!r} that links "
            f"rows to cache entries; do not override {LINK_COLUMN!r} in the model"
        )
    if col.primary_key and len(table.primary_key.columns) == 1:
        raise CacheConfigError(
            f"{what}: {LINK_COLUMN!r} must not be the only primary key column; keep the "
            "inherited 'id' or declare another primary key"
        )


def registered_models() -> dict[str, type[CustomMetadataBase]]:
    """A copy of the registry: name -> model."""
    with _registry_lock:
        return dict(_registry)


def _unregister(name: str) -> None:
    """For tests: forget ``name``."""
    with _registry_lock:
        _registry.pop(name, None)


def model_for(name: str) -> type[CustomMetadataBase]:
    with _registry_lock:
        model = _registry.get(name)
        known = sorted(_registry)
    if model is None:
        listed = ", ".join(repr(n) for n in known) or "none yet"
        raise CacheConfigError(
            f"custom_metadata: no model is registered as {name!r} (registered: {listed}); "
            f"decorate its class with @custom_metadata_model({name!r}) before using it"
        )
    return model


# ------------------------------------------------------------------ per cache


class _Borrowed:
    """The index's own sqlite3 connection, lent to SQLAlchemy inside the index's
    transaction: SQLAlchemy may execute on it but never end the transaction."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


class CustomStore:
    """One cache's access to its custom-metadata tables: an engine on the index's
    database, table creation, the writer used inside ``put`` and queries."""

    def __init__(self, index: CacheIndex, backend: str) -> None:
        # Tables made in this cache's database, by name and table: {tag: (name, model)}.
        self._ready: dict[str, tuple[str, type[CustomMetadataBase]]] = {}
        self._ready_lock = threading.Lock()
        self._local = threading.local()
        self._pid = os.getpid()
        self.put_engine: Engine | None = None
        if isinstance(index, SqlAlchemyIndex):
            self.engine = index.engine
            self._owns_engine = False
            self.raw_sqlite = False
        elif isinstance(index, SqliteIndex) and index.path is not None:
            path = str(index.path)

            def connect() -> sqlite3.Connection:
                return sqlite3.connect(
                    path, timeout=30.0, isolation_level=None, check_same_thread=False
                )

            # Queries get pooled connections of their own to the index file (WAL:
            # readers never block the index's writer).
            self.engine = sa.create_engine(
                "sqlite:///" + path, creator=connect, poolclass=sa.pool.QueuePool
            )
            sqlite_write_events(self.engine)
            # Rows written by put go through the index's connection and transaction.
            self.put_engine = sa.create_engine(
                "sqlite://", creator=self._borrowed, poolclass=sa.pool.NullPool
            )
            self._owns_engine = True
            self.raw_sqlite = True
            backend_of_index = getattr(index, "_backend", None)
            if backend_of_index is not None:
                backend_of_index.on_reopen(self._reopened)
        else:
            raise CacheConfigError(
                f"custom metadata (custom_metadata=, query_custom, session, ...) needs a SQL "
                f"metadata backend: {SUPPORTED}; this cache uses metadata_backend={backend!r}"
            )
        self.postgres = self.engine.dialect.name == "postgresql"
        md = sa.MetaData()
        tables = index_tables(md)
        self.registry_table: Table = tables["custom"]
        # Only the columns queries join on; the SQLite index creates its table itself.
        self.entries = sa.table("cache_entries", sa.column("key"), sa.column("expires"))

    def _borrowed(self) -> _Borrowed:
        conn = getattr(self._local, "raw", None)
        if conn is None:  # pragma: no cover - only put's writer connects this engine
            raise CacheBackendError("custom metadata writer used outside a put", backend="sqlite")
        return _Borrowed(conn)

    def _reopened(self, conn: sqlite3.Connection) -> None:
        """The index's file was deleted or replaced while open: pooled query connections
        still read the old one, and the new one lacks the tables made so far."""
        self.engine.dispose()
        with self._ready_lock:
            made, self._ready = list(self._ready.values()), {}
        for name, model in made:
            self.ensure(name, model)

    def check_process(self) -> None:
        if self._pid != os.getpid():
            # A forked child must not share its parent's pooled connections.
            self._pid = os.getpid()
            if self._owns_engine:
                self.engine.dispose(close=False)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose(close=self._pid == os.getpid())
            if self.put_engine is not None:
                self.put_engine.dispose()

    # ------------------------------------------------------------- tables

    @contextmanager
    def _ddl(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                # Take the write lock up front: a deferred transaction that later writes
                # gets SQLITE_BUSY at once, without waiting, when another process writes.
                conn = conn.execution_options(cacheness_write=True)
            with conn.begin():
                if self.postgres:
                    # Serialise CREATE TABLE between processes (DDL is transactional there).
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_DDL_LOCK})
                yield conn

    def ensure(self, name: str, model: type[CustomMetadataBase]) -> None:
        """Create ``model``'s table (or add the columns it lacks) and link it to the
        index's removals; once per cache and table."""
        table: Table = model.__table__  # type: ignore[assignment]
        tag = f"{name}\x00{table.name}"
        if tag in self._ready:
            return
        with self._ready_lock:
            if tag in self._ready:
                return
            try:
                with self._ddl() as conn:
                    self.registry_table.create(conn, checkfirst=True)
                    table.create(conn, checkfirst=True)
                    self._add_missing_columns(conn, name, table)
                    if self.raw_sqlite:
                        self._triggers(conn, table)
                    self._register(conn, name, table)
            except sa.exc.SQLAlchemyError as exc:
                raise CacheBackendError(
                    f"cannot create the table {table.name!r} of custom metadata {name!r}: {exc}",
                    backend=self.engine.dialect.name,
                ) from exc
            self._ready[tag] = (name, model)

    def _add_missing_columns(self, conn: Connection, name: str, table: Table) -> None:
        have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        for col in table.columns:
            if col.name in have:
                continue
            if not col.nullable and col.server_default is None:
                raise CacheConfigError(
                    f"the table {table.name!r} of custom metadata {name!r} exists without the "
                    f"column {col.name!r}, which is NOT NULL without a server default, so it "
                    "cannot be added to existing rows; make it nullable (or give it "
                    "server_default=...), or add it to the table yourself"
                )
            spec = sa.schema.CreateColumn(col).compile(dialect=conn.dialect)
            prep = conn.dialect.identifier_preparer
            conn.exec_driver_sql(f"ALTER TABLE {prep.format_table(table)} ADD COLUMN {spec}")
            logger.info("added column %s to custom metadata table %s", col.name, table.name)

    def _triggers(self, conn: Connection, table: Table) -> None:
        q = conn.dialect.identifier_preparer.quote
        t, link = q(table.name), q(LINK_COLUMN)
        # An overwrite updates the index row in place, naming ``created`` (update_data and
        # touch do not: the entry and its rows stay); AFTER INSERT covers the REPLACE of
        # older versions. The new entry's own rows are written after its index row.
        for event, row in (("DELETE", "OLD"), ("INSERT", "NEW"), ("UPDATE OF created", "OLD")):
            trig = q(f"cacheness_{event.split()[0].lower()}_{table.name}")
            conn.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS {trig} AFTER {event} ON cache_entries "
                f"BEGIN DELETE FROM {t} WHERE {link} = {row}.key; END"
            )

    def _register(self, conn: Connection, name: str, table: Table) -> None:
        r = self.registry_table
        got = conn.execute(sa.select(r.c.table_name).where(r.c.name == name)).first()
        if got is None:
            conn.execute(
                r.insert().values(name=name, table_name=table.name, link_column=LINK_COLUMN)
            )
        elif got[0] != table.name:
            conn.execute(r.update().where(r.c.name == name).values(table_name=table.name))

    def listed_tables(self) -> list[tuple[str, str]]:
        """(table_name, link_column) of every custom table this database knows."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(CUSTOM_TABLES):
                return []
            r = self.registry_table
            return [(a, b) for a, b in conn.execute(sa.select(r.c.table_name, r.c.link_column))]

    # --------------------------------------------------------------- writes

    def writer(
        self, key: str, items: list[tuple[str, CustomMetadataBase]]
    ) -> Callable[[Any], None]:
        """What the index runs inside the transaction of ``key``'s put."""

        def write(conn: Any) -> None:
            if isinstance(conn, sqlite3.Connection):
                assert self.put_engine is not None
                self._local.raw = conn
                try:
                    with self.put_engine.connect() as borrowed:
                        self._flush(borrowed, key, items)
                finally:
                    self._local.raw = None
            else:
                self._flush(conn, key, items)

        return write

    def _flush(
        self, conn: Connection, key: str, items: list[tuple[str, CustomMetadataBase]]
    ) -> None:
        session = Session(bind=conn, autoflush=False, expire_on_commit=False)
        try:
            for _, obj in items:
                setattr(obj, LINK_COLUMN, key)
                session.add(obj)
            session.flush()
            # The caller's instances come back detached, with their ids filled in.
            session.expunge_all()
        except sa.exc.SQLAlchemyError as exc:
            names = ", ".join(n for n, _ in items)
            raise CacheBackendError(
                f"could not store custom metadata ({names}) for {key!r}, so the put was "
                f"rolled back: {getattr(exc, 'orig', None) or exc}",
                key=key,
                backend=self.engine.dialect.name,
            ) from exc
        finally:
            session.close()

    def cleanup_orphans(self, models: Mapping[str, type[CustomMetadataBase]]) -> int:
        tables = dict(self.listed_tables())
        for name, model in models.items():
            self.ensure(name, model)
            tables.setdefault(model.__table__.name, LINK_COLUMN)  # type: ignore[attr-defined]
        n = 0
        e = self.entries
        with self._ddl() as conn:
            for table_name, link in sorted(tables.items()):
                if not sa.inspect(conn).has_table(table_name):
                    continue
                t = sa.table(table_name, sa.column(link))
                orphan = ~sa.exists().where(e.c.key == t.c[link])
                n += conn.execute(t.delete().where(orphan)).rowcount or 0
        return n

    # -------------------------------------------------------------- queries

    def live_query(
        self, session: Session, model: type[CustomMetadataBase], now: float
    ) -> Query[Any]:
        """Rows of ``model`` whose entry exists and has not expired."""
        e = self.entries
        return (
            session.query(model)
            .join(e, e.c.key == getattr(model, LINK_COLUMN))
            .filter(sa.or_(e.c.expires.is_(None), e.c.expires > now))
        )

    def pool_stats(self) -> dict[str, int]:
        pool: Any = self.engine.pool
        size = pool.size() if hasattr(pool, "size") else 0
        out = pool.checkedout() if hasattr(pool, "checkedout") else 0
        over = pool.overflow() if hasattr(pool, "overflow") else 0
        return {"pool_size": int(size), "checked_out": int(out), "overflow": max(0, int(over))}


def check_filters(name: str, model: type[CustomMetadataBase], filters: Mapping[str, Any]) -> None:
    if not isinstance(filters, Mapping):
        raise CacheConfigError(
            f"filters of query_custom({name!r}) must be a dict of column -> value, "
            f"not {type(filters).__name__}"
        )
    cols = model.__table__.columns
    for col in filters:
        if col not in cols:
            raise CacheConfigError(
                f"custom metadata {name!r} has no column {col!r}; its columns: "
                f"{', '.join(c.name for c in cols)}"
            )


def check_instance(name: str, model: type[CustomMetadataBase], obj: Any) -> None:
    if not isinstance(obj, model):
        raise CacheConfigError(
            f"custom_metadata[{name!r}] must be a {model.__name__} instance (the model "
            f"registered as {name!r}), not {type(obj).__name__}"
        )
    state = sa.inspect(obj)
    if state.has_identity:
        raise CacheConfigError(
            f"custom_metadata[{name!r}]: this {model.__name__} instance was already stored "
            f"(for {getattr(obj, LINK_COLUMN, None)!r}); pass a new instance to each put"
        )
