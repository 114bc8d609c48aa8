"""Fixtures for the SQL pull-through tests: a recording source, a fake clock, backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest


class Clock:
    """A settable clock; caches under test read time only through it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class PriceSource:
    """A slow source of daily prices on weekdays; records every range asked of it.

    ``calls`` holds ``(symbol, start_date, end_date)`` per call, with the
    timestamps as ISO dates so assertions read like the scenarios.
    """

    def __init__(self, *, version: int = 1) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.version = version
        self.fail_on_call: int | None = None
        self.error: Exception = RuntimeError("source down")
        self.holidays: set[str] = set()

    def price(self, symbol: str, day: pd.Timestamp) -> float:
        return float(self.version * 1000 + (ord(symbol[0]) % 7) * 100 + day.day_of_year)

    def __call__(
        self, symbol: str, start_date: pd.Timestamp, end_date: pd.Timestamp
    ) -> pd.DataFrame:
        assert isinstance(start_date, pd.Timestamp) and str(start_date.tz) == "UTC"
        assert isinstance(end_date, pd.Timestamp) and str(end_date.tz) == "UTC"
        self.calls.append((symbol, start_date.date().isoformat(), end_date.date().isoformat()))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise self.error
        days = pd.date_range(start_date, end_date, freq="D")
        days = [d for d in days if d.day_of_week < 5 and d.date().isoformat() not in self.holidays]
        return pd.DataFrame(
            {
                "symbol": [symbol] * len(days),
                "date": days,
                "price": [self.price(symbol, d) for d in days],
                "volume": [100 * d.day for d in days],
            }
        )


def weekdays(start: str, end: str) -> list[str]:
    return [d.date().isoformat() for d in pd.date_range(start, end) if d.day_of_week < 5]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source() -> PriceSource:
    return PriceSource()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The local cache database: a SQLite file, and the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cache.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def make_cache(backend_url: str, clock: Clock) -> Iterator[Callable[..., Any]]:
    """Build SqlCaches on ``backend_url`` with the test clock; all are closed afterwards."""
    from cacheness.sql import SqlCache

    made: list[Any] = []

    def make(builder: str = "for_timeseries", **kwargs: Any) -> Any:
        kwargs.setdefault("clock", clock)
        cache = getattr(SqlCache, builder)(backend_url, **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()
