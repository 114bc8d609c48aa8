"""``INSERT ... ON CONFLICT DO UPDATE`` on the dialects that have it.

SQLite and PostgreSQL have it natively; DuckDB (through duckdb_engine, a
PostgreSQL-derived dialect) accepts the same syntax. Other dialects fall
back to delete-then-insert inside the caller's transaction, which is just as
atomic, only slower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["has_native_upsert", "upsert"]

_PG_LIKE = {"postgresql", "duckdb"}
# SQLite's default limit on bound variables is 32766; executemany binds one
# row at a time, so the chunk only bounds memory held by the driver.
_CHUNK = 50_000


def has_native_upsert(dialect_name: str) -> bool:
    return dialect_name == "sqlite" or dialect_name in _PG_LIKE


def _statement(table: sa.Table, dialect_name: str) -> Any:
    pk = [c.name for c in table.primary_key.columns]
    others = [c.name for c in table.columns if c.name not in pk]
    if dialect_name == "sqlite":
        stmt: Any = sqlite.insert(table)
    else:
        stmt = postgresql.insert(table)
    if not others:
        return stmt.on_conflict_do_nothing(index_elements=pk)
    return stmt.on_conflict_do_update(
        index_elements=pk, set_={name: stmt.excluded[name] for name in others}
    )


def upsert(conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows``, replacing any with the same primary key (caller owns the transaction)."""
    if not rows:
        return
    dialect_name = conn.dialect.name
    if has_native_upsert(dialect_name):
        stmt = _statement(table, dialect_name)
        for i in range(0, len(rows), _CHUNK):
            conn.execute(stmt, list(rows[i : i + _CHUNK]))
        return
    pk = [c for c in table.primary_key.columns]
    delete = table.delete().where(*(c == sa.bindparam(f"_pk_{c.name}") for c in pk))
    for i in range(0, len(rows), _CHUNK):
        chunk = rows[i : i + _CHUNK]
        conn.execute(delete, [{f"_pk_{c.name}": r[c.name] for c in pk} for r in chunk])
        conn.execute(table.insert(), list(chunk))
