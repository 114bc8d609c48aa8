"""``sql_fetcher``: the real pull-through, a remote database cached into a local SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from cacheness.sql import SqlCache, sql_fetcher
from cacheness.storage.errors import CacheBackendError
from sqlalchemy import Float, Integer, String

QUERY = (
    "SELECT symbol, day AS date, price FROM quotes "
    "WHERE symbol = :symbol AND day BETWEEN :start_date AND :end_date ORDER BY day"
)


class CountingEngine:
    """Counts the statements that reach the remote database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statements: list[tuple[str, Any]] = []
        sa.event.listen(engine, "before_cursor_execute", self._log)

    def _log(self, conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if "quotes" in statement:
            self.statements.append((statement, params))


def _fill_remote(engine: sa.Engine, date_type: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"CREATE TABLE quotes (symbol VARCHAR(10), day {date_type}, price FLOAT)")
        )
        conn.execute(
            sa.text("INSERT INTO quotes VALUES (:s, :d, :p)"),
            [
                {"s": s, "d": d.date(), "p": float(i + (100 if s == "MSFT" else 0))}
                for s in ("AAPL", "MSFT")
                for i, d in enumerate(pd.date_range("2024-01-01", "2024-03-31"))
            ],
        )


@pytest.fixture
def remote_pg(postgres_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(postgres_url)
    _fill_remote(engine, "DATE")
    yield engine
    engine.dispose()


def _local_cache(path: Path, fetcher: Any) -> SqlCache:
    return SqlCache.for_timeseries(
        f"sqlite:///{path}",
        "quotes",
        key_columns=["symbol"],
        time_column="date",
        time_increment=timedelta(days=1),
        data_fetcher=fetcher,
        price=Float,
    )


@pytest.mark.integration
def test_postgres_source_into_local_sqlite(
    remote_pg: sa.Engine, postgres_url: str, tmp_path: Path
) -> None:
    counter = CountingEngine(remote_pg)
    with (
        sql_fetcher(remote_pg, QUERY) as remote,
        _local_cache(tmp_path / "local.db", remote) as cache,
    ):
        df = cache.get_data(symbol="AAPL", start_date="2024-01-10", end_date="2024-01-20")
        assert df["price"].tolist() == [float(i) for i in range(9, 20)]
        assert str(df["date"].dtype) == "datetime64[us, UTC]"
        assert df["date"].iloc[0] == pd.Timestamp("2024-01-10", tz="UTC")
        cache.get_data(symbol="AAPL", start_date="2024-01-12", end_date="2024-01-18")
        assert len(counter.statements) == 1
        df = cache.get_data(symbol="AAPL", start_date="2024-01-05", end_date="2024-01-25")
        assert len(df) == 21 and len(counter.statements) == 3
        statement, params = counter.statements[0]
        assert "AAPL" not in statement  # bound, never formatted into the SQL
        assert "AAPL" in str(params)
    # A URL, not an engine: the fetcher makes and disposes its own engine.
    with sql_fetcher(postgres_url, QUERY) as by_url:
        frame = by_url(
            symbol="MSFT",
            start_date=pd.Timestamp("2024-02-01", tz="UTC"),
            end_date=pd.Timestamp("2024-02-02", tz="UTC"),
        )
        assert frame["price"].tolist() == [131.0, 132.0]


@pytest.mark.integration
def test_postgres_lookup_batches_ids_into_one_in_query(postgres_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE people (user_id INTEGER PRIMARY KEY, name TEXT)"))
            conn.execute(sa.text("INSERT INTO people VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')"))
        counter: list[Any] = []
        sa.event.listen(engine, "before_cursor_execute", lambda *a: counter.append(a[3]))
        fetch = sql_fetcher(engine, "SELECT user_id, name FROM people WHERE user_id IN :user_id")
        with SqlCache.for_lookup_table(
            f"sqlite:///{tmp_path / 'people.db'}",
            "people",
            primary_keys=["user_id"],
            data_fetcher=fetch,
            user_id=Integer,
            name=String(50),
        ) as people:
            assert people.batch_fetch is True
            assert people.get_data(user_id=[3, 1])["name"].tolist() == ["ann", "cy"]
            assert people.get_data(user_id=[1, 2, 3])["name"].tolist() == ["ann", "bob", "cy"]
            assert len(counter) == 2
            assert counter[1] == {"user_id_1": 2}
    finally:
        engine.dispose()


def test_sqlite_source_binds_parameters_safely(tmp_path: Path) -> None:
    remote = sa.create_engine(f"sqlite:///{tmp_path / 'remote.db'}")
    try:
        _fill_remote(remote, "DATE")
        fetch = sql_fetcher(remote, "SELECT symbol, price FROM quotes WHERE symbol = :symbol")
        assert fetch(symbol="AAPL' OR '1'='1").empty  # a value, not SQL
        assert len(fetch(symbol="AAPL")) == 91
        with pytest.raises(CacheBackendError) as info:
            sql_fetcher(remote, "SELECT nope FROM missing_table WHERE a = :a")(a=1)
        assert isinstance(info.value.__cause__, sa.exc.OperationalError)
        with pytest.raises(ValueError, match="symbol"):
            fetch(other=1)
    finally:
        remote.dispose()
