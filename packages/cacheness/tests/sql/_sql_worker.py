"""A separate process asking a shared SQLite cache for a range (used by test_concurrency).

Usage: python _sql_worker.py DB LOG GO START END OUT
Waits for the GO file so that the workers ask at the same moment; every
fetch appends ``symbol start end`` to LOG; the dates returned go to OUT.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta

import pandas as pd
from cacheness.sql import SqlCache
from sqlalchemy import Float


def main() -> None:
    db, log, go, start, end, out = sys.argv[1:7]

    def fetch(symbol: str, start_date: pd.Timestamp, end_date: pd.Timestamp) -> pd.DataFrame:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {symbol} {start_date.date()} {end_date.date()}\n")
        time.sleep(0.4)  # a slow source, so the two requests overlap in time
        days = pd.date_range(start_date, end_date, freq="D")
        return pd.DataFrame({"symbol": symbol, "date": days, "price": [float(d.day) for d in days]})

    with SqlCache.for_timeseries(
        db,
        "shared",
        key_columns=["symbol"],
        time_column="date",
        time_increment=timedelta(days=1),
        data_fetcher=fetch,
        price=Float,
    ) as cache:
        deadline = time.monotonic() + 30
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.005)
        df = cache.get_data(symbol="AAPL", start_date=start, end_date=end)
    with open(out, "w", encoding="utf-8") as f:
        json.dump([ts.date().isoformat() for ts in df["date"]] + [df["price"].tolist()], f)


if __name__ == "__main__":
    main()
