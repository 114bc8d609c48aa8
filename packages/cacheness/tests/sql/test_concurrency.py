"""Two processes asking for overlapping missing ranges of one SQLite cache at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from cacheness.sql import SqlCache
from sqlalchemy import Float

WORKER = Path(__file__).with_name("_sql_worker.py")


def _days(start: str, end: str) -> list[str]:
    return [d.date().isoformat() for d in pd.date_range(start, end)]


def test_overlapping_requests_fetch_each_gap_once(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    log = tmp_path / "fetches.log"
    go = tmp_path / "go"

    def noop(symbol: str, start_date: pd.Timestamp, end_date: pd.Timestamp) -> pd.DataFrame:
        raise AssertionError("the parent never fetches")

    # Create the tables first so both workers open an existing database.
    SqlCache.for_timeseries(
        f"sqlite:///{db}",
        "shared",
        key_columns=["symbol"],
        time_column="date",
        time_increment=timedelta(days=1),
        data_fetcher=noop,
        price=Float,
    ).close()
    ranges = [("2024-01-01", "2024-01-31"), ("2024-01-15", "2024-02-15")]
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), f"sqlite:///{db}", str(log), str(go), s, e, str(out)],
            stderr=subprocess.PIPE,
        )
        for (s, e), out in zip(ranges, outs, strict=True)
    ]
    time.sleep(0.1)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()

    for (s, e), out in zip(ranges, outs, strict=True):
        *got, prices = json.loads(out.read_text())
        assert got == _days(s, e)
        assert prices == [float(pd.Timestamp(d).day) for d in got]

    fetched: list[str] = []
    for line in log.read_text().splitlines():
        _, symbol, start, end = line.split()
        assert symbol == "AAPL"
        fetched.extend(_days(start, end))
    assert sorted(fetched) == _days("2024-01-01", "2024-02-15")  # every day exactly once

    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT symbol, date, COUNT(*) FROM shared GROUP BY 1, 2")
            ).all()
            leases = conn.execute(sa.text("SELECT COUNT(*) FROM shared__leases")).scalar_one()
    finally:
        engine.dispose()
    assert len(rows) == len(_days("2024-01-01", "2024-02-15"))
    assert all(count == 1 for *_, count in rows)
    assert leases == 0
