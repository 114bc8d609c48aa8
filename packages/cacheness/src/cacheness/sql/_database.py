"""The cache's own database: its engine, the tables made in it, and its errors.

Driver errors leave here as ``CacheBackendError`` naming the table and the
action, so callers never see ``sqlalchemy.exc``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from cacheness.sql._fetchers import make_engine
from cacheness.storage.errors import CacheBackendError, CacheConfigError

if TYPE_CHECKING:
    from cacheness.sql._cache import SqlCache

__all__: list[str] = []


def _make_engine(url: str, engine_kwargs: Mapping[str, Any] | None) -> sa.Engine:
    if "://" not in url:
        url = "sqlite:///" + os.path.abspath(url)
    kwargs = dict(engine_kwargs or {})
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # WAL lets readers go on while one process writes fetched rows.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.fetchall()
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def _create_tables(cache: SqlCache) -> None:
    tables = [cache.table, cache.ledger.coverage, cache.ledger.leases]
    with _db(cache, "create the cache tables"), cache.engine.begin() as conn:
        for table in tables:
            conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
            for index in table.indexes:
                conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))
        inspector = sa.inspect(conn)
        reflected = {c["name"]: c["type"] for c in inspector.get_columns(cache.table_name)}
        pk = list(inspector.get_pk_constraint(cache.table_name)["constrained_columns"])
    existing = set(reflected)
    if existing != set(cache.schema.names):
        raise CacheConfigError(
            f"table {cache.table_name!r} already exists with columns {sorted(existing)}, "
            f"but this cache declares {sorted(cache.schema.names)}; use another "
            "table_name or drop the old table"
        )
    if sorted(pk) != sorted(cache.schema.primary_key):
        raise CacheConfigError(
            f"table {cache.table_name!r} already exists with primary key {pk}, but this "
            f"cache declares {cache.schema.primary_key}; use another table_name or drop "
            "the old table"
        )
    for spec in cache.schema.columns:
        # The type the table is made with (an instant is a BIGINT of µs on SQLite).
        stored = cache.table.c[spec.name].type
        found, declared = _python_type(reflected[spec.name]), _python_type(stored)
        if found is not None and declared is not None and found is not declared:
            raise CacheConfigError(
                f"column {spec.name!r} of table {cache.table_name!r} holds "
                f"{found.__name__} values ({reflected[spec.name]}), but this cache declares "
                f"{spec.type!r}; use another table_name or drop the old table"
            )


def _python_type(type_: Any) -> type | None:
    """The Python type a column's values come back as, or None when SQLAlchemy
    cannot say (then the column is not compared)."""
    try:
        found = type_.python_type
    except (NotImplementedError, AttributeError):
        return None
    return found if isinstance(found, type) else None


@contextmanager
def _db(cache: SqlCache, action: str) -> Iterator[None]:
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        raise CacheBackendError(
            f"could not {action} for table {cache.table_name!r}: "
            f"{exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}",
            key=cache.table_name,
            backend=cache.engine.dialect.name,
        ) from exc
