"""SQL pull-through cache benchmarks: cold, warm and partial requests, hit overhead, a big table.

Run ``python -m benchmarks.bench_sql`` (full, about a minute on 2 cores, most
of it loading the 10,000,000-row table) or ``python -m benchmarks.bench_sql
--quick`` (1,000,000 rows). Prints a Markdown table; :func:`run` returns the
rows (``workload``, ``system``, ``seconds``, ``notes``) for a harness.

The source is an in-process function with no latency, so the figures are the
cache's own cost. Beside ``cacheness.sql`` each hit workload also times the
hand-written equivalent (one ``sqlite3`` query turned into a DataFrame): the
floor any SQLite-backed cache sits on. Seconds are medians of repeated runs.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Row = dict[str, Any]
SYSTEM = "cacheness.sql"
BASELINE = "sqlite3+pandas (hand-written query)"


def _median(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _daily_source(calls: list[Any]) -> Callable[..., Any]:
    import pandas as pd

    def fetch(symbol: str, start_date: Any, end_date: Any) -> Any:
        calls.append((symbol, start_date, end_date))
        days = pd.date_range(start_date, end_date, freq="D")
        return pd.DataFrame(
            {"symbol": symbol, "date": days, "price": range(len(days)), "volume": 1000}
        )

    return fetch


def _baseline_query(db: Path, sql: str, params: tuple[Any, ...], columns: list[str]) -> Any:
    import pandas as pd

    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    frame = pd.DataFrame.from_records(rows, columns=columns)
    frame[columns[1]] = pd.to_datetime(frame[columns[1]], unit="us", utc=True)
    return frame


def _symbols(n: int) -> list[str]:
    return [f"S{i:03d}" for i in range(n)]


def bench_daily(tmp: Path, quick: bool) -> list[Row]:
    """100 symbols, one year of daily rows: cold, warm (one call and per symbol), partial."""
    from cacheness.sql import SqlCache
    from sqlalchemy import Float, Integer

    rows: list[Row] = []
    n_symbols = 100
    symbols = _symbols(n_symbols)
    calls: list[Any] = []
    db = tmp / "daily.db"
    repeat = 5 if quick else 15
    with SqlCache.for_timeseries(
        f"sqlite:///{db}",
        "prices",
        key_columns=["symbol"],
        time_column="date",
        time_increment=timedelta(days=1),
        data_fetcher=_daily_source(calls),
        price=Float,
        volume=Integer,
    ) as cache:
        year = {"start_date": "2023-01-01", "end_date": "2023-12-31"}
        t0 = time.perf_counter()
        df = cache.get_data(symbol=symbols, **year)
        cold = time.perf_counter() - t0
        assert len(df) == 365 * n_symbols and len(calls) == n_symbols
        rows.append(
            _row(
                "1y daily x 100 symbols: cold (all missing)",
                cold,
                f"{n_symbols} fetches, {len(df)} rows upserted with ledger",
            )
        )
        warm = _median(lambda: cache.get_data(symbol=symbols, **year), repeat)
        assert len(calls) == n_symbols
        rows.append(
            _row("1y daily x 100 symbols: warm, one call", warm, f"{len(df)} rows, target < 50 ms")
        )
        per_symbol = _median(lambda: [cache.get_data(symbol=s, **year) for s in symbols], 3)
        rows.append(
            _row(
                "1y daily x 100 symbols: warm, 100 calls",
                per_symbol,
                f"{per_symbol / n_symbols * 1000:.2f} ms per symbol (365 rows)",
            )
        )
        lo = 1672531200 * 1_000_000  # 2023-01-01 UTC in microseconds
        hi = 1703980800 * 1_000_000  # 2023-12-31
        marks = ",".join("?" * n_symbols)
        sql = (
            f"SELECT symbol, date, price, volume FROM prices WHERE symbol IN ({marks}) "
            "AND date BETWEEN ? AND ? ORDER BY symbol, date"
        )
        base = _median(
            lambda: _baseline_query(
                db, sql, (*symbols, lo, hi), ["symbol", "date", "price", "volume"]
            ),
            repeat,
        )
        rows.append(
            _row(
                "1y daily x 100 symbols: warm, one call",
                base,
                "same rows, no ledger; new connection, GC left on",
                system=BASELINE,
            )
        )
        calls.clear()
        t0 = time.perf_counter()
        df = cache.get_data(symbol=symbols, start_date="2022-12-01", end_date="2024-01-31")
        partial = time.perf_counter() - t0
        assert len(calls) == 2 * n_symbols
        rows.append(
            _row(
                "1y daily x 100 symbols: partial (+1 month each side)",
                partial,
                f"{len(calls)} gap fetches, {len(df)} rows returned",
            )
        )
    return rows


def bench_hit_overhead(tmp: Path, quick: bool) -> list[Row]:
    """A full hit of 1,000 rows: the cost of get_data beside the bare query."""
    import pandas as pd
    from cacheness.sql import SqlCache
    from sqlalchemy import Float

    def hourly(sensor: str, start_date: Any, end_date: Any) -> Any:
        hours = pd.date_range(start_date, end_date, freq="h")
        return pd.DataFrame({"sensor": sensor, "ts": hours, "value": 1.5})

    db = tmp / "hourly.db"
    repeat = 50 if quick else 200
    with SqlCache.for_timeseries(
        f"sqlite:///{db}",
        "readings",
        key_columns=["sensor"],
        time_column="ts",
        time_increment=timedelta(hours=1),
        data_fetcher=hourly,
        value=Float,
    ) as cache:
        start = pd.Timestamp("2024-01-01", tz="UTC")
        end = start + pd.Timedelta(hours=999)
        assert len(cache.get_data(sensor="a", start_date=start, end_date=end)) == 1000
        hit = _median(lambda: cache.get_data(sensor="a", start_date=start, end_date=end), repeat)
        lo, hi = start.value // 1000, end.value // 1000
        base = _median(
            lambda: _baseline_query(
                db,
                "SELECT sensor, ts, value FROM readings WHERE sensor = ? "
                "AND ts BETWEEN ? AND ? ORDER BY ts",
                ("a", lo, hi),
                ["sensor", "ts", "value"],
            ),
            repeat,
        )
    return [
        _row("full hit, 1,000 rows", hit, "target < 5 ms; includes ledger read and typing"),
        _row("full hit, 1,000 rows", base, "new connection per query, GC left on", system=BASELINE),
        _row(
            "full hit, 1,000 rows: overhead",
            hit - base,
            "cacheness.sql minus the bare query",
        ),
    ]


def _big_rows(
    symbols: list[str], points: int, start_us: int, step_us: int
) -> Iterator[tuple[Any, ...]]:
    for s in symbols:
        for k in range(points):
            yield (s, start_us + k * step_us, float(k % 1000))


def bench_big_table(tmp: Path, quick: bool) -> list[Row]:
    """A 1-month query on a 10,000,000-row table (1,000,000 with --quick)."""
    import pandas as pd
    from cacheness.sql import SqlCache
    from sqlalchemy import Float

    n_rows = 1_000_000 if quick else 10_000_000
    n_symbols = 100
    points = n_rows // n_symbols
    symbols = _symbols(n_symbols)
    step = 3600 * 1_000_000
    start_us = int(pd.Timestamp("2010-01-01", tz="UTC").value // 1000)
    end_us = start_us + (points - 1) * step
    db = tmp / "big.db"

    def never(**_: Any) -> Any:
        raise AssertionError("the big table is fully covered")

    def open_cache() -> SqlCache:
        return SqlCache.for_timeseries(
            f"sqlite:///{db}",
            "big",
            key_columns=["symbol"],
            time_column="ts",
            time_increment=timedelta(hours=1),
            data_fetcher=never,
            ttl_seconds=None,
            value=Float,
        )

    open_cache().close()  # creates the tables and indexes
    t0 = time.perf_counter()
    conn = sqlite3.connect(db)
    try:
        # Bulk load behind the cache's back (rows in key order, then one
        # never-expiring ledger entry per key): the benchmark is the query.
        conn.execute("PRAGMA synchronous=OFF")
        conn.executemany(
            "INSERT INTO big (symbol, ts, value) VALUES (?, ?, ?)",
            _big_rows(symbols, points, start_us, step),
        )
        conn.executemany(
            "INSERT INTO big__coverage (key, lo, hi, fetched_at, expires_at) "
            "VALUES (?, ?, ?, ?, NULL)",
            [(f'["{s}"]', start_us, end_us, time.time()) for s in symbols],
        )
        conn.commit()
    finally:
        conn.close()
    load = time.perf_counter() - t0
    label = f"{n_rows:,}-row table"
    rows = [_row(f"{label}: bulk load (setup)", load, "sqlite3 executemany, WITHOUT ROWID table")]
    month_start = pd.Timestamp("2010-06-01", tz="UTC")
    month_end = pd.Timestamp("2010-06-30 23:00", tz="UTC")
    with open_cache() as cache:
        t0 = time.perf_counter()
        df = cache.get_data(symbol="S042", start_date=month_start, end_date=month_end)
        first = time.perf_counter() - t0
        assert len(df) == 720, len(df)
        warm = _median(
            lambda: cache.get_data(symbol="S042", start_date=month_start, end_date=month_end),
            20 if quick else 50,
        )
        assert cache.get_cache_stats()["fetches"] == 0
    note = "720 rows; target < 100 ms" + ("; --quick: 1M rows, not 10M" if quick else "")
    rows.append(_row(f"{label}: 1-month query, first after open", first, note))
    rows.append(_row(f"{label}: 1-month query, warm", warm, note))
    return rows


def _row(workload: str, seconds: float, notes: str, *, system: str = SYSTEM) -> Row:
    return {"workload": workload, "system": system, "seconds": seconds, "notes": notes}


def run(quick: bool) -> list[Row]:
    """Every SQL workload; rows with ``workload``, ``system``, ``seconds``, ``notes``."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_sql_") as d:
        tmp = Path(d)
        for bench in (bench_daily, bench_hit_overhead, bench_big_table):
            logger.info("running %s", bench.__name__)
            rows.extend(bench(tmp, quick))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| workload | system | ms | notes |", "|---|---|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['system']} | {r['seconds'] * 1000:.2f} | {r['notes']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M-row big table, fewer repeats")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    print(markdown(run(args.quick)))


if __name__ == "__main__":
    main()
