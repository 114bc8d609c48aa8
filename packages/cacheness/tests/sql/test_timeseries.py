"""Time series scenarios: exactly which ranges reach the source, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from cacheness.sql import SchemaMismatchError, SqlCache
from cacheness.storage.errors import CacheBackendError, CacheError, CacheKeyError
from sqlalchemy import Float, Integer

DAY = timedelta(days=1)


def weekdays(start: str, end: str) -> list[str]:
    return [d.date().isoformat() for d in pd.date_range(start, end) if d.day_of_week < 5]


def dates(frame: pd.DataFrame) -> list[str]:
    return [ts.date().isoformat() for ts in frame["date"]]


def open_prices(make_cache: Callable[..., Any], source: Any) -> SqlCache:
    """A cache of daily prices per symbol (one day's TTL) on the test backend."""
    cache: SqlCache = make_cache(
        table_name="prices",
        key_columns=["symbol"],
        time_column="date",
        time_increment=DAY,
        data_fetcher=source,
        ttl_seconds=86400,
        price=Float,
        volume=Integer,
    )
    return cache


@pytest.fixture
def prices(make_cache: Callable[..., Any], source: Any) -> SqlCache:
    return open_prices(make_cache, source)


def table_rows(cache: SqlCache) -> list[tuple[Any, ...]]:
    with cache.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(sa.select(cache.table).order_by(*cache.table.primary_key))
        ]


def ledger_rows(cache: SqlCache) -> list[tuple[Any, ...]]:
    c = cache.ledger.coverage.c
    with cache.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(sa.select(c.key, c.lo, c.hi, c.expires_at).order_by(c.key, c.lo))
        ]


def test_first_request_fetches_exactly_the_range(prices: SqlCache, source: Any) -> None:
    df = prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-31")
    assert source.calls == [("AAPL", "2024-01-01", "2024-01-31")]
    assert dates(df) == weekdays("2024-01-01", "2024-01-31")
    assert list(df.columns) == ["symbol", "date", "price", "volume"]
    assert str(df["date"].dtype) == "datetime64[us, UTC]"
    assert df["price"].dtype == "float64"
    assert str(df["volume"].dtype) == "Int64"
    assert df["price"].tolist() == [
        source.price("AAPL", pd.Timestamp(d)) for d in weekdays("2024-01-01", "2024-01-31")
    ]
    assert df.index.tolist() == list(range(len(df)))
    stats = prices.get_cache_stats()
    assert stats["misses"] == 1 and stats["fetches"] == 1 and stats["rows_fetched"] == len(df)
    assert stats["rows"] == len(df)


def test_sub_range_is_a_hit(prices: SqlCache, source: Any) -> None:
    prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-31")
    df = prices.get_data(symbol="AAPL", start_date="2024-01-10", end_date="2024-01-12")
    assert source.calls == [("AAPL", "2024-01-01", "2024-01-31")]
    assert dates(df) == ["2024-01-10", "2024-01-11", "2024-01-12"]
    assert prices.get_cache_stats()["hits"] == 1


def test_extension_on_both_sides_fetches_only_the_two_ends(prices: SqlCache, source: Any) -> None:
    prices.get_data(symbol="AAPL", start_date="2024-01-10", end_date="2024-01-20")
    df = prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-31")
    assert source.calls == [
        ("AAPL", "2024-01-10", "2024-01-20"),
        ("AAPL", "2024-01-01", "2024-01-09"),
        ("AAPL", "2024-01-21", "2024-01-31"),
    ]
    assert dates(df) == weekdays("2024-01-01", "2024-01-31")
    assert prices.get_cache_stats()["partial_hits"] == 1
    assert prices.get_cache_stats()["intervals"] == {"AAPL": 1}


def test_holes_are_filled_and_nothing_cached_is_refetched(prices: SqlCache, source: Any) -> None:
    prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-05")
    prices.get_data(symbol="AAPL", start_date="2024-01-10", end_date="2024-01-12")
    prices.get_data(symbol="AAPL", start_date="2024-01-20", end_date="2024-01-31")
    source.calls.clear()
    df = prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-31")
    assert source.calls == [
        ("AAPL", "2024-01-06", "2024-01-09"),
        ("AAPL", "2024-01-13", "2024-01-19"),
    ]
    assert dates(df) == weekdays("2024-01-01", "2024-01-31")
    rows = table_rows(prices)
    assert len(rows) == len({(r[0], r[1]) for r in rows}) == len(df)


def test_more_gaps_than_max_fetches_become_one_covering_fetch(
    make_cache: Callable[..., Any], source: Any
) -> None:
    cache = make_cache(
        table_name="capped",
        key_columns=["symbol"],
        time_column="date",
        time_increment=DAY,
        data_fetcher=source,
        max_fetches=2,
        price=Float,
        volume=Integer,
    )
    for day in ("2024-01-03", "2024-01-05", "2024-01-09"):
        cache.get_data(symbol="X", start_date=day, end_date=day)
    source.calls.clear()
    df = cache.get_data(symbol="X", start_date="2024-01-01", end_date="2024-01-12")
    assert source.calls == [("X", "2024-01-01", "2024-01-12")]
    assert dates(df) == weekdays("2024-01-01", "2024-01-12")
    assert len(table_rows(cache)) == len(df)  # the refetched days were upserted, not duplicated


def test_empty_source_ranges_are_covered_until_they_expire(
    prices: SqlCache, source: Any, clock: Any
) -> None:
    weekend = prices.get_data(symbol="AAPL", start_date="2024-01-06", end_date="2024-01-07")
    assert weekend.empty and list(weekend.columns) == ["symbol", "date", "price", "volume"]
    source.holidays = {"2024-01-15"}
    prices.get_data(symbol="AAPL", start_date="2024-01-15", end_date="2024-01-15")
    prices.get_data(symbol="AAPL", start_date="2024-01-06", end_date="2024-01-07")
    prices.get_data(symbol="AAPL", start_date="2024-01-15", end_date="2024-01-15")
    assert source.calls == [
        ("AAPL", "2024-01-06", "2024-01-07"),
        ("AAPL", "2024-01-15", "2024-01-15"),
    ]
    clock.advance(86401)
    prices.get_data(symbol="AAPL", start_date="2024-01-06", end_date="2024-01-07")
    assert source.calls[-1] == ("AAPL", "2024-01-06", "2024-01-07")
    assert len(source.calls) == 3


def test_expired_part_alone_is_refetched_and_updated(
    prices: SqlCache, source: Any, clock: Any
) -> None:
    prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-10")
    clock.advance(50_000)
    prices.get_data(symbol="AAPL", start_date="2024-01-11", end_date="2024-01-20")
    clock.advance(40_000)  # the first range is now 90,000 s old (TTL 86,400), the second 40,000
    source.version = 2
    df = prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-20")
    assert source.calls[-1] == ("AAPL", "2024-01-01", "2024-01-10")
    assert len(source.calls) == 3
    by_day = dict(zip(dates(df), df["price"], strict=True))
    assert by_day["2024-01-02"] == 2000 + (ord("A") % 7) * 100 + 2  # refetched: new version
    assert by_day["2024-01-12"] == 1000 + (ord("A") % 7) * 100 + 12  # still fresh: old version
    assert len(table_rows(prices)) == len(weekdays("2024-01-01", "2024-01-20"))


def test_rows_the_source_dropped_disappear_on_refetch(
    prices: SqlCache, source: Any, clock: Any
) -> None:
    prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-05")
    source.holidays = {"2024-01-03"}
    clock.advance(86401)
    df = prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-05")
    assert dates(df) == ["2024-01-01", "2024-01-02", "2024-01-04", "2024-01-05"]


def test_open_interval_has_its_own_shorter_ttl(
    make_cache: Callable[..., Any], source: Any, clock: Any
) -> None:
    clock.now = pd.Timestamp("2024-01-10 15:00", tz="UTC").timestamp()
    live = make_cache(
        "for_realtime_timeseries",
        table_name="live",
        key_columns=["symbol"],
        time_column="date",
        time_increment=DAY,
        data_fetcher=source,
        price=Float,
        volume=Integer,
    )
    assert (live.ttl_seconds, live.open_ttl_seconds) == (3600, 60)
    live.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-12")
    clock.advance(61)  # the open part (today and later) expired, the closed part did not
    live.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-12")
    assert source.calls == [
        ("AAPL", "2024-01-01", "2024-01-12"),
        ("AAPL", "2024-01-10", "2024-01-12"),
    ]
    clock.advance(3600)
    live.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-12")
    assert source.calls[-1] == ("AAPL", "2024-01-01", "2024-01-12")


def test_list_of_keys_fetches_each_key_once_and_sorts(prices: SqlCache, source: Any) -> None:
    prices.get_data(symbol="MSFT", start_date="2024-01-01", end_date="2024-01-05")
    df = prices.get_data(symbol=["MSFT", "AAPL"], start_date="2024-01-01", end_date="2024-01-05")
    assert source.calls == [
        ("MSFT", "2024-01-01", "2024-01-05"),
        ("AAPL", "2024-01-01", "2024-01-05"),
    ]
    assert df["symbol"].tolist() == ["AAPL"] * 5 + ["MSFT"] * 5
    assert dates(df) == weekdays("2024-01-01", "2024-01-05") * 2


def test_fetcher_failure_leaves_cache_unchanged_and_propagates(
    prices: SqlCache, source: Any
) -> None:
    prices.get_data(symbol="AAPL", start_date="2024-01-10", end_date="2024-01-20")
    before_rows, before_ledger = table_rows(prices), ledger_rows(prices)
    source.fail_on_call = 3  # the second gap of the next request
    with pytest.raises(RuntimeError) as info:
        prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-31")
    assert info.value is source.error
    assert table_rows(prices) == before_rows
    assert ledger_rows(prices) == before_ledger
    source.fail_on_call = None
    df = prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-31")
    assert source.calls[-2:] == [
        ("AAPL", "2024-01-01", "2024-01-09"),
        ("AAPL", "2024-01-21", "2024-01-31"),
    ]
    assert dates(df) == weekdays("2024-01-01", "2024-01-31")


def test_crash_while_writing_rolls_back_rows_and_ledger(
    prices: SqlCache, source: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices.get_data(symbol="AAPL", start_date="2024-01-10", end_date="2024-01-20")
    before_rows, before_ledger = table_rows(prices), ledger_rows(prices)
    original = prices.ledger.record
    calls = 0

    def crash_on_second(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
        original(*args, **kwargs)

    monkeypatch.setattr(prices.ledger, "record", crash_on_second)
    with pytest.raises(CacheBackendError) as info:
        prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-31")
    assert isinstance(info.value.__cause__, sa.exc.OperationalError)
    assert table_rows(prices) == before_rows
    assert ledger_rows(prices) == before_ledger


def test_schema_mismatch_raises_typed_error_and_stores_nothing(
    make_cache: Callable[..., Any],
) -> None:
    def bad(symbol: str, start_date: pd.Timestamp, end_date: pd.Timestamp) -> pd.DataFrame:
        return pd.DataFrame({"symbol": [symbol], "date": [start_date], "close": [1.0]})

    cache = make_cache(
        table_name="guarded",
        key_columns=["symbol"],
        time_column="date",
        time_increment=DAY,
        data_fetcher=bad,
        price=Float,
    )
    with pytest.raises(SchemaMismatchError) as info:
        cache.get_data(symbol="A", start_date="2024-01-01", end_date="2024-01-02")
    err = info.value
    assert isinstance(err, CacheError)
    assert err.missing == ["price"] and err.extra == ["close"] and err.table == "guarded"
    assert "nothing was stored" in str(err)
    stats = cache.get_cache_stats()
    assert stats["rows"] == 0 and stats["intervals"] == {}


def test_unconvertible_values_are_a_schema_mismatch(make_cache: Callable[..., Any]) -> None:
    def bad(symbol: str, start_date: pd.Timestamp, end_date: pd.Timestamp) -> pd.DataFrame:
        return pd.DataFrame({"symbol": [symbol], "date": [start_date], "price": ["n/a"]})

    cache = make_cache(
        table_name="typed",
        key_columns=["symbol"],
        time_column="date",
        time_increment=DAY,
        data_fetcher=bad,
        price=Float,
    )
    with pytest.raises(SchemaMismatchError) as info:
        cache.get_data(symbol="A", start_date="2024-01-01", end_date="2024-01-01")
    assert info.value.column == "price"
    assert cache.get_cache_stats()["rows"] == 0


def test_time_inputs_naive_aware_and_dates_are_utc(make_cache: Callable[..., Any]) -> None:
    seen: list[tuple[pd.Timestamp, pd.Timestamp]] = []

    def ticks(sensor: str, start_date: pd.Timestamp, end_date: pd.Timestamp) -> pd.DataFrame:
        seen.append((start_date, end_date))
        hours = pd.date_range(start_date, end_date, freq="h")
        # The source answers in New York time: stored instants must still be UTC.
        return pd.DataFrame(
            {
                "sensor": sensor,
                "ts": hours.tz_convert("America/New_York"),
                "value": range(len(hours)),
            }
        )

    cache = make_cache(
        table_name="ticks",
        key_columns=["sensor"],
        time_column="ts",
        time_increment=timedelta(hours=1),
        data_fetcher=ticks,
        value=Float,
    )
    aware_start = datetime(2024, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=-5)))  # 05:00 UTC
    df = cache.get_data(sensor="s1", start_date=aware_start, end_date="2024-01-01 08:00")
    # Whole hours are fetched: a row at 08:30 belongs to the 08:00 bucket.
    assert seen == [
        (
            pd.Timestamp("2024-01-01 05:00", tz="UTC"),
            pd.Timestamp("2024-01-01 08:59:59.999999", tz="UTC"),
        )
    ]
    assert df["ts"].tolist() == list(
        pd.date_range("2024-01-01 05:00", "2024-01-01 08:00", freq="h", tz="UTC")
    )
    df2 = cache.get_data(
        sensor="s1", start_date=date(2024, 1, 1), end_date=pd.Timestamp("2024-01-01 06:30")
    )
    assert seen[-1] == (
        pd.Timestamp("2024-01-01 00:00", tz="UTC"),
        pd.Timestamp("2024-01-01 04:59:59.999999", tz="UTC"),
    )
    assert len(df2) == 7  # 00:00 .. 06:00, the requested range exactly


def test_integer_sequences_use_start_and_end(make_cache: Callable[..., Any]) -> None:
    calls: list[tuple[str, int, int]] = []

    def blocks(chain: str, start: int, end: int) -> pd.DataFrame:
        calls.append((chain, start, end))
        heights = [h for h in range(start, end + 1) if h % 10 == 0]
        return pd.DataFrame({"chain": chain, "height": heights, "size": [h * 2 for h in heights]})

    cache = make_cache(
        table_name="blocks",
        key_columns=["chain"],
        time_column="height",
        ordered_increment=10,
        data_fetcher=blocks,
        size=Integer,
    )
    df = cache.get_data(chain="btc", start=100, end=200)
    assert df["height"].tolist() == list(range(100, 201, 10))
    assert str(df["height"].dtype) == "int64"
    cache.get_data(chain="btc", start=75, end=245)
    # Whole buckets of 10: 200 stands for 200..209, 75 is in 70..79.
    assert calls == [("btc", 100, 209), ("btc", 70, 99), ("btc", 210, 249)]
    assert cache.get_data(chain="btc", start=81, end=99)["height"].tolist() == [90]
    assert len(calls) == 3
    with pytest.raises(CacheKeyError):
        cache.get_data(chain="btc", start="a", end=5)


def test_custom_gap_detector_decides_the_fetches(
    make_cache: Callable[..., Any], source: Any
) -> None:
    seen: list[tuple[dict[str, Any], int]] = []

    def whole_month(
        query: dict[str, Any], cached: pd.DataFrame, cache: SqlCache
    ) -> list[dict[str, Any]]:
        seen.append((query, len(cached)))
        if cache.find_gaps(**query) == []:
            return []
        start = query["start_date"].replace(day=1)
        end = start + pd.offsets.MonthEnd(0)
        return [{"symbol": query["symbol"], "start_date": start, "end_date": end}]

    cache = make_cache(
        table_name="monthly",
        key_columns=["symbol"],
        time_column="date",
        time_increment=DAY,
        data_fetcher=source,
        gap_detector=whole_month,
        price=Float,
        volume=Integer,
    )
    df = cache.get_data(symbol="AAPL", start_date="2024-02-10", end_date="2024-02-12")
    assert source.calls == [("AAPL", "2024-02-01", "2024-02-29")]
    assert dates(df) == ["2024-02-12"]
    assert seen[0][0]["start_date"] == pd.Timestamp("2024-02-10", tz="UTC") and seen[0][1] == 0
    cache.get_data(symbol="AAPL", start_date="2024-02-20", end_date="2024-02-22")
    assert len(source.calls) == 1  # the detector's fetch was recorded in the ledger
    assert seen[1][1] == 3


def test_invalidate_clear_and_cleanup(prices: SqlCache, source: Any, clock: Any) -> None:
    prices.get_data(symbol=["AAPL", "MSFT"], start_date="2024-01-01", end_date="2024-01-31")
    removed = prices.invalidate_cache(symbol="AAPL", start_date="2024-01-10", end_date="2024-01-19")
    assert removed == len(weekdays("2024-01-10", "2024-01-19"))
    source.calls.clear()
    prices.get_data(symbol=["AAPL", "MSFT"], start_date="2024-01-01", end_date="2024-01-31")
    assert source.calls == [("AAPL", "2024-01-10", "2024-01-19")]
    assert prices.invalidate_cache(symbol="MSFT") == len(weekdays("2024-01-01", "2024-01-31"))
    assert list(prices.get_cache_stats()["intervals"]) == ["AAPL"]
    clock.advance(90_000)
    prices.get_data(symbol="MSFT", start_date="2024-02-01", end_date="2024-02-02")
    stats = prices.get_cache_stats()
    assert stats["expired_intervals"] == 3  # AAPL's three pieces
    assert prices.cleanup_expired() == 3
    stats = prices.get_cache_stats()
    assert stats["expired_intervals"] == 0 and stats["rows"] == 2
    assert prices.clear_cache() == 2
    assert prices.get_cache_stats()["rows"] == 0


def test_bad_requests_raise_key_errors(prices: SqlCache, source: Any) -> None:
    with pytest.raises(CacheKeyError, match="did you mean 'start_date'"):
        prices.get_data(symbol="A", start_dat="2024-01-01", end_date="2024-01-02")
    with pytest.raises(CacheKeyError, match="missing key parameter 'symbol'"):
        prices.get_data(start_date="2024-01-01", end_date="2024-01-02")
    with pytest.raises(CacheKeyError, match="after"):
        prices.get_data(symbol="A", start_date="2024-02-01", end_date="2024-01-02")
    with pytest.raises(CacheKeyError):
        prices.get_data(symbol="A", start_date="not a date", end_date="2024-01-02")
    assert source.calls == []


def test_rows_off_the_grid_are_fetched_with_their_bucket(make_cache: Callable[..., Any]) -> None:
    """Daily closes stamped 16:00 and weekly rows on Mondays (the grid's weeks start
    on Thursdays, 1970-01-01): every row inside the requested range comes back."""
    closes = pd.date_range("2024-01-01 16:00", "2024-01-10 16:00", freq="D", tz="UTC")
    mondays = pd.date_range("2023-12-01", "2024-03-01", freq="W-MON", tz="UTC")
    calls: list[str] = []

    def source(stamps: pd.DatetimeIndex, name: str) -> Any:
        def fetch(start_date: pd.Timestamp, end_date: pd.Timestamp) -> pd.DataFrame:
            calls.append(name)
            inside = [t for t in stamps if start_date <= t <= end_date]
            return pd.DataFrame({"date": inside, "v": [float(t.day) for t in inside]})

        return fetch

    daily = make_cache(
        table_name="closes",
        time_column="date",
        time_increment=timedelta(days=1),
        data_fetcher=source(closes, "daily"),
        v=Float,
    )
    got = daily.get_data(start_date="2024-01-01", end_date="2024-01-05 23:59")
    assert got["date"].tolist() == list(closes[:5])
    # Part of a day already fetched: a hit, and the row is there.
    part = daily.get_data(start_date="2024-01-05 12:00", end_date="2024-01-05 20:00")
    assert part["date"].tolist() == [closes[4]] and calls == ["daily"]

    weekly = make_cache(
        table_name="weekly",
        time_column="date",
        time_increment=timedelta(days=7),
        data_fetcher=source(mondays, "weekly"),
        v=Float,
    )
    got = weekly.get_data(start_date="2024-01-01", end_date="2024-01-29")
    expected = [t for t in mondays if pd.Timestamp("2024-01-01", tz="UTC") <= t]
    assert got["date"].tolist() == expected[:5]  # Jan 1, 8, 15, 22 and 29


def test_cleanup_racing_a_refetch_keeps_the_fresh_rows(
    make_cache: Callable[..., Any], source: Any, clock: Any
) -> None:
    """Two caches on one table (two processes, in effect). Right after A's cleanup
    has read the ledger, B refetches the expired range; A must not delete B's
    rows, and the ledger must not claim rows that are gone."""
    from sqlalchemy import event

    a, b = open_prices(make_cache, source), open_prices(make_cache, source)
    a.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-12")
    clock.advance(90_000)  # expired
    fired: list[int] = []

    def refetch_in_between(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and "__coverage" in statement and statement.lstrip().startswith("SELECT"):
            fired.append(1)
            b.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-12")

    event.listen(a.engine, "after_cursor_execute", refetch_in_between)
    try:
        a.cleanup_expired()
    finally:
        event.remove(a.engine, "after_cursor_execute", refetch_in_between)
    assert fired
    fetches = a.get_cache_stats()["fetches"]
    got = a.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-01-12")
    assert dates(got) == weekdays("2024-01-01", "2024-01-12")
    assert a.get_cache_stats()["expired_intervals"] == 0
    assert a.get_cache_stats()["fetches"] == fetches  # a hit: B's rows and entry stayed
