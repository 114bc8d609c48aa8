from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from cacheness.storage.abc import EntryRecord, MetadataBackend
from cacheness.storage.backends._memory import matches_filter
from cacheness.storage.backends._rows import COLUMNS, record_to_row, row_to_record
from cacheness.storage.errors import CacheBackendError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Table

__all__ = ["SqlAlchemyMetadataBackend"]

logger = logging.getLogger(__name__)

# Any constant: the advisory lock that serialises table creation on PostgreSQL.
_PG_SETUP_LOCK = 0x63616368


def _tables(metadata: Any) -> tuple[Table, Table]:
    from sqlalchemy import BigInteger, Column, Integer, LargeBinary, String, Table, Text

    entries = Table(
        "cacheness_entries",
        metadata,
        # Keys are any str: no length cap, except where the dialect needs one to index it.
        Column("key", Text().with_variant(String(768), "mysql", "mariadb"), primary_key=True),
        Column("blob_key", String(200), nullable=False, index=True),
        Column("data_type", String(300), nullable=False),
        Column("handler", String(100), nullable=False),
        Column("codec", String(100), nullable=False),
        Column("size", BigInteger, nullable=False),
        Column("content_hash", String(200), nullable=False),
        Column("created_us", BigInteger, nullable=False),
        Column("info", Text, nullable=False),
        Column("metadata", Text, nullable=False),
        Column("signature", String(200)),
        Column("inline_value", LargeBinary, nullable=True),
    )
    lock = Table(
        "cacheness_lock", metadata, Column("id", Integer, primary_key=True), Column("n", BigInteger)
    )
    return entries, lock


def _record(row: Any) -> EntryRecord:
    record = row_to_record(row)
    if record.inline is not None and type(record.inline) is not bytes:
        record.inline = bytes(record.inline)  # some drivers hand out memoryview
    return record


class SqlAlchemyMetadataBackend(MetadataBackend):
    """Entries in any database SQLAlchemy reaches (PostgreSQL for teams).

    ``write_lock`` takes a row lock on a one-row table inside a transaction:
    portable across dialects, and it serialises exactly the check-then-act
    steps of put/delete that decide whether a blob is still referenced.
    """

    name: ClassVar[str] = "sqlalchemy"
    supports_inline: ClassVar[bool] = True
    schemes: ClassVar[tuple[str, ...]] = (
        "postgresql",
        "mysql",
        "mariadb",
        "duckdb",
        "mssql",
        "oracle",
    )

    def __init__(self, engine: Engine | str, **engine_options: Any) -> None:
        import sqlalchemy as sa

        try:
            self.engine = (
                sa.create_engine(engine, **engine_options) if isinstance(engine, str) else engine
            )
        except (ImportError, sa.exc.ArgumentError) as exc:
            url = engine if isinstance(engine, str) else str(engine.url)
            hint = " (pip install 'cacheness-storage[postgres]')" if "postgres" in url else ""
            raise CacheBackendError(
                f"cannot create an engine for {url!r}: {exc}{hint}", backend=self.name
            ) from exc
        self._owns_engine = isinstance(engine, str)
        self._sa = sa
        self._md = sa.MetaData()
        self.entries, self._lock_table = _tables(self._md)
        self._local = threading.local()
        try:
            self._setup()
        except sa.exc.SQLAlchemyError as exc:
            if self._owns_engine:
                self.engine.dispose()
            raise CacheBackendError(
                f"cannot prepare tables at {self.engine.url!r}: {exc}", backend=self.name
            ) from exc

    def _setup(self) -> None:
        """Create the tables and the lock row, safely when several processes start at once.

        Two machines opening a fresh database race on CREATE TABLE; were the
        loser to go on before the lock row exists, ``write_lock`` would lock nothing.
        """
        sa = self._sa
        postgres = self.engine.dialect.name == "postgresql"
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    if postgres:
                        # DDL is transactional there: the lock is held until COMMIT.
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SETUP_LOCK}
                        )
                    self._md.create_all(conn)
                    self._add_inline_column(conn)
                break
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
                # Another process created the same tables between our check and
                # our CREATE; the next attempt sees them.
                if attempt == 4:
                    raise
                logger.debug("table creation raced another process; retrying")
                time.sleep(0.05 * (attempt + 1))
        t = self._lock_table
        try:
            with self.engine.begin() as conn:
                if conn.execute(sa.select(t.c.id).where(t.c.id == 1)).first() is None:
                    conn.execute(t.insert().values(id=1, n=0))
        except sa.exc.IntegrityError:
            pass  # another process inserted it first: it exists, which is all we need

    def _add_inline_column(self, conn: Connection) -> None:
        """Give a table made before inline values existed their column."""
        sa = self._sa
        cols = {c["name"] for c in sa.inspect(conn).get_columns(self.entries.name)}
        if "inline_value" not in cols:
            kind = self.entries.c.inline_value.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {self.entries.name} ADD COLUMN inline_value {kind}"))

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqlAlchemyMetadataBackend:
        return cls(url, **options)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        try:
            with self.engine.begin() as conn:
                self._local.conn = conn
                try:
                    yield conn
                finally:
                    self._local.conn = None
        except self._sa.exc.SQLAlchemyError as exc:
            raise CacheBackendError(f"{self.engine.url!r}: {exc}", backend=self.name) from exc

    @contextmanager
    def _locked(self) -> Iterator[Connection]:
        with self._begin() as conn:
            if not getattr(self._local, "locked", False):
                t = self._lock_table
                done = conn.execute(t.update().where(t.c.id == 1).values(n=t.c.n + 1))
                if done.rowcount != 1:
                    raise CacheBackendError(
                        f"the lock row of {t.name} at {self.engine.url!r} is missing, so writes "
                        "cannot be serialised; re-open the store (that recreates it)",
                        backend=self.name,
                    )
                self._local.locked = True
                try:
                    yield conn
                finally:
                    self._local.locked = False
            else:
                yield conn

    def write_lock(self) -> Any:
        return self._locked()

    def _row(self, conn: Connection, key: str) -> Any:
        e = self.entries
        return conn.execute(
            self._sa.select(*[e.c[c] for c in COLUMNS]).where(e.c.key == key)
        ).first()

    def get(self, key: str) -> EntryRecord | None:
        with self._begin() as conn:
            row = self._row(conn, key)
        return None if row is None else _record(row)

    def put(self, record: EntryRecord) -> EntryRecord | None:
        values = dict(zip(COLUMNS, record_to_row(record), strict=True))
        with self._locked() as conn:
            row = self._row(conn, record.key)
            if row is None:
                conn.execute(self.entries.insert().values(**values))
            else:
                conn.execute(
                    self.entries.update().where(self.entries.c.key == record.key).values(**values)
                )
        return None if row is None else _record(row)

    def delete(self, key: str) -> EntryRecord | None:
        with self._locked() as conn:
            row = self._row(conn, key)
            if row is not None:
                conn.execute(self.entries.delete().where(self.entries.c.key == key))
        return None if row is None else _record(row)

    def list_keys(
        self, prefix: str | None = None, metadata_filter: Mapping[str, Any] | None = None
    ) -> list[str]:
        e = self.entries
        q = self._sa.select(e.c.key, e.c.metadata)
        if prefix:
            # A range (key >= prefix AND key < next) is wrong under a
            # locale collation (PostgreSQL's default: 'A' sorts between 'a' and 'b');
            # comparing the leading characters is exact on every dialect.
            q = q.where(self._sa.func.substr(e.c.key, 1, len(prefix)) == prefix)
        with self._begin() as conn:
            rows = conn.execute(q).all()
        if prefix:
            rows = [r for r in rows if r[0].startswith(prefix)]
        if metadata_filter:
            rows = [r for r in rows if matches_filter(json.loads(r[1]), metadata_filter)]
        # Code-point order, as every other backend returns (not the database's collation).
        return sorted(r[0] for r in rows)

    def count_refs(self, blob_key: str) -> int:
        e = self.entries
        with self._begin() as conn:
            n = conn.execute(
                self._sa.select(self._sa.func.count()).where(e.c.blob_key == blob_key)
            ).scalar_one()
        return int(n)

    def iter_records(self) -> Iterator[EntryRecord]:
        e = self.entries
        with self._begin() as conn:
            rows = conn.execute(self._sa.select(*[e.c[c] for c in COLUMNS]).order_by(e.c.key)).all()
        return (_record(r) for r in rows)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()
