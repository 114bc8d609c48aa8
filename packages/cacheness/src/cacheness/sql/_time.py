"""Time handling: everything becomes a UTC instant, stored as integer microseconds.

Naive inputs are taken as UTC, aware ones are converted, and ``date`` means
midnight UTC. Integer microseconds since the epoch are what the coverage
ledger stores on every backend, and what the data table stores on backends
without a native timezone-aware type (SQLite): they compare, index and
convert to pandas without parsing strings.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped, unused-ignore]

from cacheness.storage.errors import CacheConfigError, CacheKeyError

__all__ = [
    "US_PER_SECOND",
    "increment_to_us",
    "series_to_us",
    "series_to_utc",
    "timestamp_to_us",
    "to_utc",
    "us_to_series",
    "us_to_timestamp",
]

US_PER_SECOND = 1_000_000


def to_utc(value: Any, *, name: str = "time") -> pd.Timestamp:
    """One instant as a UTC ``pandas.Timestamp`` (microsecond unit)."""
    if isinstance(value, bool) or value is None:
        raise CacheKeyError(
            f"{name}={value!r} is not a point in time; pass a str, date, datetime or Timestamp"
        )
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise CacheKeyError(
            f"{name}={value!r} cannot be read as a date or time; pass e.g. '2024-01-31' "
            "or a datetime"
        ) from exc
    if ts is pd.NaT:
        raise CacheKeyError(f"{name} is NaT; pass a real date or time")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.as_unit("us")


def timestamp_to_us(ts: pd.Timestamp) -> int:
    return int(ts.as_unit("us").value // 1000)


def us_to_timestamp(us: int) -> pd.Timestamp:
    return pd.Timestamp(us, unit="us", tz="UTC")


def increment_to_us(increment: dt.timedelta | pd.Timedelta | str) -> int:
    """A positive time increment in whole microseconds."""
    try:
        us = int(pd.Timedelta(increment).value // 1000)
    except (TypeError, ValueError) as exc:
        raise CacheConfigError(
            f"time_increment={increment!r} is not a time span; pass e.g. timedelta(days=1)"
        ) from exc
    if us <= 0:
        raise CacheConfigError(f"time_increment={increment!r} must be positive")
    return us


def series_to_utc(values: pd.Series) -> pd.Series:
    """A column of times as ``datetime64[us, UTC]`` (naive values are UTC)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        out = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        out = values.dt.tz_localize("UTC")
    else:
        out = pd.to_datetime(values, utc=True)
    return out.dt.as_unit("us")


def series_to_us(values: pd.Series) -> np.ndarray:
    """A column of times as int64 microseconds since the epoch (UTC)."""
    utc = series_to_utc(values)
    if utc.isna().any():
        raise ValueError("contains missing times")
    return utc.dt.tz_convert(None).to_numpy("datetime64[us]").view("int64")


def us_to_series(values: Any) -> pd.Series:
    arr = np.asarray(values, dtype="int64")
    return pd.Series(pd.to_datetime(arr, unit="us", utc=True)).dt.as_unit("us")
