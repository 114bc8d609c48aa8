"""Construction, options, lifecycle and error types of SqlCache."""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import cacheness.sql
import pandas as pd
import pytest
import sqlalchemy as sa
from cacheness.sql import SchemaMismatchError, SqlCache
from cacheness.storage.errors import CacheConfigError, CacheError
from sqlalchemy import Float, Integer, String


def fetch(symbol: str, start_date: pd.Timestamp, end_date: pd.Timestamp) -> pd.DataFrame:
    days = pd.date_range(start_date, end_date)
    return pd.DataFrame({"symbol": symbol, "date": days, "price": 1.0})


def series(url: Any, **kwargs: Any) -> SqlCache:
    options: dict[str, Any] = {
        "key_columns": ["symbol"],
        "time_column": "date",
        "time_increment": timedelta(days=1),
        "data_fetcher": fetch,
        "price": Float,
    }
    options.update(kwargs)
    return SqlCache.for_timeseries(url, "prices", **options)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"time_increment": timedelta(days=1), "ordered_increment": 1}, "give one of them"),
        ({"ordered_increment": 0, "time_increment": None}, "positive integer"),
        ({"time_increment": timedelta(0)}, "must be positive"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"max_fetches": 0}, "max_fetches"),
        ({"key_columns": ["start_date"]}, "clash"),
        ({"date": Integer}, "time column 'date'"),
        ({"price": "float"}, "need a SQLAlchemy type"),
        ({"columns": {"volume": "int"}}, "not a SQLAlchemy column type"),
        ({"ttl_secs": 5}, "did you mean ttl_seconds"),
        ({"data_fetcher": 42}, "not callable"),
    ],
)
def test_bad_options_raise_config_errors(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(CacheConfigError, match=match):
        series(tmp_path / "c.db", **kwargs)


def test_constructor_needs_a_mode_and_a_sane_table_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with pytest.raises(CacheConfigError, match="time_column"):
        SqlCache(url, "t", data_fetcher=fetch)
    with pytest.raises(CacheConfigError, match="not both"):
        SqlCache(url, "t", data_fetcher=fetch, time_column="date", primary_keys=["id"])
    with pytest.raises(CacheConfigError, match="table_name"):
        SqlCache(url, "drop table; --", data_fetcher=fetch, primary_keys=["id"])
    with pytest.raises(CacheConfigError, match="database URL"):
        SqlCache("nosuchdialect://x", "t", data_fetcher=fetch, primary_keys=["id"])
    assert isinstance(CacheConfigError("x"), ValueError)


def test_existing_table_with_other_columns_is_refused(tmp_path: Path) -> None:
    series(tmp_path / "c.db").close()
    with pytest.raises(CacheConfigError, match="already exists"):
        SqlCache.for_timeseries(
            tmp_path / "c.db",
            "prices",
            key_columns=["symbol"],
            time_column="date",
            data_fetcher=fetch,
            close=Float,
        )


def test_plain_path_url_and_engine_are_accepted(tmp_path: Path) -> None:
    with series(str(tmp_path / "plain.db")) as cache:
        assert len(cache.get_data(symbol="A", start_date="2024-01-01", end_date="2024-01-03")) == 3
    with series(tmp_path / "plain.db") as again:
        assert again.get_cache_stats()["rows"] == 3
        assert again.get_cache_stats()["fetches"] == 0
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        with series(engine) as shared:
            assert (
                len(shared.get_data(symbol="A", start_date="2024-01-02", end_date="2024-01-03"))
                == 2
            )
        with engine.connect() as conn:  # still usable: a passed-in engine is not disposed
            assert conn.execute(sa.text("SELECT COUNT(*) FROM prices")).scalar_one() == 3
    finally:
        engine.dispose()


def test_in_memory_cache_works(tmp_path: Path) -> None:
    with series("sqlite://") as cache:
        df = cache.get_data(symbol=["B", "A"], start_date="2024-01-01", end_date="2024-01-02")
        assert df["symbol"].tolist() == ["A", "A", "B", "B"]


def test_gap_detector_must_return_a_list_of_dicts(tmp_path: Path) -> None:
    bad = series(tmp_path / "c.db", gap_detector=lambda q, c, s: "everything")
    with bad as cache, pytest.raises(CacheConfigError, match="list of dicts"):
        cache.get_data(symbol="A", start_date="2024-01-01", end_date="2024-01-02")


def test_schema_error_pickles_with_its_context() -> None:
    err = SchemaMismatchError("bad", table="t", missing=["a"], extra=["b"])
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, CacheError)
    assert (str(back), back.table, back.missing, back.extra) == ("bad", "t", ["a"], ["b"])


def test_public_names() -> None:
    assert cacheness.sql.__all__ == sorted(cacheness.sql.__all__)
    for name in ("SqlCache", "SchemaMismatchError", "sql_fetcher", "SqlFetcher"):
        assert name in cacheness.sql.__all__


def test_lookup_batch_detection_reads_annotations(tmp_path: Path) -> None:
    def listed(user_id: list[int]) -> pd.DataFrame:
        return pd.DataFrame({"user_id": user_id, "name": "x"})

    def scalar(user_id: int) -> pd.DataFrame:
        return pd.DataFrame({"user_id": [user_id], "name": "x"})

    url = f"sqlite:///{tmp_path / 'u.db'}"
    kw: dict[str, Any] = {"primary_keys": ["user_id"], "user_id": Integer, "name": String(10)}
    with SqlCache.for_lookup_table(url, "a", data_fetcher=listed, **kw) as a:
        assert a.batch_fetch is True
    with SqlCache.for_lookup_table(url, "b", data_fetcher=scalar, **kw) as b:
        assert b.batch_fetch is False
    with SqlCache.for_lookup_table(url, "c", data_fetcher=scalar, batch_fetch=True, **kw) as c:
        assert c.batch_fetch is True


def test_import_cacheness_does_not_load_the_sql_layer() -> None:
    code = "import sys, cacheness; print('cacheness.sql' in sys.modules, 'sqlalchemy.orm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
