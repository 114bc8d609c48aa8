"""The coverage ledger and the per-key leases, two small tables beside the cache table.

The ledger records what was *asked of the source*, not which rows exist: a
range the source had no rows for (a weekend, a holiday) is covered all the
same, and is not asked again until its entry expires. Each entry is one key
(the JSON of its key values), a closed range ``[lo, hi]`` in the column's
value space (integer microseconds for instants, the integers themselves for
sequences, ``0..0`` for lookups), and when it was fetched and expires.

Leases stop two processes from fetching the same gap at once: a process
takes the lease on every key it is about to fetch, re-reads the ledger, and
fetches only what is still missing. A lease has a deadline, so a crashed
holder delays the others, and never blocks them for good.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cacheness.sql._gaps import Interval, remove

__all__ = ["Entry", "Ledger", "chunks"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_IN_CHUNK = 500


class Entry(NamedTuple):
    id: int
    key: str
    lo: int
    hi: int
    fetched_at: float
    expires_at: float | None

    def valid(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


def chunks(items: Sequence[T], size: int = _IN_CHUNK) -> Iterable[Sequence[T]]:
    """``items`` in consecutive pieces of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Ledger:
    def __init__(self, metadata: sa.MetaData, table_name: str) -> None:
        self.coverage = sa.Table(
            f"{table_name}__coverage",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            # Text: a label is the JSON of every key value (255-character strings,
            # several of them), longer than any fixed VARCHAR would allow.
            sa.Column("key", sa.Text, nullable=False),
            sa.Column("lo", sa.BigInteger, nullable=False),
            sa.Column("hi", sa.BigInteger, nullable=False),
            sa.Column("fetched_at", sa.Double, nullable=False),
            sa.Column("expires_at", sa.Double, nullable=True),
            sa.Index(f"ix_{table_name}__coverage_key", "key", "lo"),
        )
        self.leases = sa.Table(
            f"{table_name}__leases",
            metadata,
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("owner", sa.String(100), nullable=False),
            sa.Column("expires_at", sa.Double, nullable=False),
        )

    # -- reading -------------------------------------------------------------

    def entries(
        self,
        conn: sa.Connection,
        keys: Sequence[str] | None = None,
        lo: int | None = None,
        hi: int | None = None,
    ) -> list[Entry]:
        """Entries for ``keys`` (all keys when None) that overlap ``[lo, hi]`` when given."""
        c = self.coverage.c
        base = sa.select(c.id, c.key, c.lo, c.hi, c.fetched_at, c.expires_at)
        if lo is not None:
            base = base.where(c.hi >= lo)
        if hi is not None:
            base = base.where(c.lo <= hi)
        if keys is None:
            return [Entry(*r) for r in conn.execute(base.order_by(c.key, c.lo))]
        out: list[Entry] = []
        for chunk in chunks(list(keys)):
            stmt = (
                base.where(c.key == chunk[0]) if len(chunk) == 1 else base.where(c.key.in_(chunk))
            )
            out.extend(Entry(*r) for r in conn.execute(stmt))
        return out

    # -- writing (inside the caller's transaction) ---------------------------

    def forget(self, conn: sa.Connection, key: str, lo: int | None, hi: int | None) -> None:
        """Drop coverage of ``[lo, hi]`` for ``key``; entries partly inside are trimmed."""
        c = self.coverage.c
        if lo is None or hi is None:
            conn.execute(self.coverage.delete().where(c.key == key))
            return
        hit = self.entries(conn, [key], lo, hi)
        if not hit:
            return
        conn.execute(self.coverage.delete().where(c.id.in_([e.id for e in hit])))
        pieces = []
        for e in hit:
            for p_lo, p_hi in remove([(e.lo, e.hi)], (lo, hi)):
                pieces.append(
                    {
                        "key": key,
                        "lo": p_lo,
                        "hi": p_hi,
                        "fetched_at": e.fetched_at,
                        "expires_at": e.expires_at,
                    }
                )
        if pieces:
            conn.execute(self.coverage.insert(), pieces)

    def record(
        self,
        conn: sa.Connection,
        key: str,
        interval: Interval,
        fetched_at: float,
        expires_at: float | None,
    ) -> None:
        """Mark ``interval`` of ``key`` as asked of the source, replacing older coverage there."""
        lo, hi = interval
        self.forget(conn, key, lo, hi)
        conn.execute(
            self.coverage.insert(),
            {"key": key, "lo": lo, "hi": hi, "fetched_at": fetched_at, "expires_at": expires_at},
        )

    def record_keys(
        self,
        conn: sa.Connection,
        keys: Sequence[str],
        fetched_at: float,
        expires_at: float | None,
    ) -> None:
        """Mark each of ``keys`` (a lookup's ids) as asked of the source, replacing any
        coverage they had: two statements per batch of keys, not per key."""
        self.forget_keys(conn, keys)
        conn.execute(
            self.coverage.insert(),
            [
                {"key": k, "lo": 0, "hi": 0, "fetched_at": fetched_at, "expires_at": expires_at}
                for k in dict.fromkeys(keys)
            ],
        )

    def forget_keys(self, conn: sa.Connection, keys: Sequence[str]) -> None:
        for chunk in chunks(list(keys)):
            conn.execute(self.coverage.delete().where(self.coverage.c.key.in_(chunk)))

    def delete_ids(self, conn: sa.Connection, ids: Sequence[int]) -> None:
        for i in range(0, len(ids), _IN_CHUNK):
            conn.execute(
                self.coverage.delete().where(self.coverage.c.id.in_(ids[i : i + _IN_CHUNK]))
            )

    def clear(self, conn: sa.Connection) -> None:
        conn.execute(self.coverage.delete())
        conn.execute(self.leases.delete())

    # -- leases ----------------------------------------------------------------

    def _lease_statement(self, dialect_name: str) -> Any:
        if dialect_name == "sqlite":
            stmt: Any = sqlite.insert(self.leases)
        elif dialect_name in ("postgresql", "duckdb"):
            stmt = postgresql.insert(self.leases)
        else:
            return None
        return stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={"owner": stmt.excluded.owner, "expires_at": stmt.excluded.expires_at},
            where=self.leases.c.expires_at < stmt.excluded.expires_at - sa.bindparam("_lease_s"),
        )

    def acquire(self, engine: sa.Engine, keys: Sequence[str], lease_seconds: float) -> str | None:
        """Take the lease on every key, waiting while another holder's lease is live.

        Returns the token to release, or None on dialects without an atomic
        upsert (there two processes may fetch the same gap, which stays
        correct because rows are upserted).
        """
        stmt = self._lease_statement(engine.dialect.name)
        if stmt is None or not keys:
            return None
        token = f"{os.getpid()}-{uuid.uuid4().hex}"
        ordered = sorted(set(keys))  # one global order: no lock-order deadlocks on PostgreSQL
        delay = 0.01
        waited = False
        while True:
            now = time.time()
            params = [
                {
                    "key": k,
                    "owner": token,
                    "expires_at": now + lease_seconds,
                    "_lease_s": lease_seconds,
                }
                for k in ordered
            ]
            with engine.connect() as conn:
                trans = conn.begin()
                try:
                    conn.execute(stmt, params)
                    held = {
                        owner
                        for chunk in chunks(ordered)
                        for (owner,) in conn.execute(
                            sa.select(self.leases.c.owner).where(self.leases.c.key.in_(chunk))
                        )
                    }
                    if held == {token}:
                        trans.commit()
                        if waited:
                            logger.debug("lease on %d key(s) taken after waiting", len(ordered))
                        return token
                    trans.rollback()
                except BaseException:
                    trans.rollback()
                    raise
            if not waited:
                logger.debug("waiting for another process fetching %d key(s)", len(ordered))
            waited = True
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def release(self, engine: sa.Engine, token: str | None) -> None:
        if token is None:
            return
        with engine.begin() as conn:
            conn.execute(self.leases.delete().where(self.leases.c.owner == token))
