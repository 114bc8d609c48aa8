from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cacheness.storage import BlobStore

pl = pytest.importorskip("polars")


def _frames() -> dict[str, Any]:
    n = 5_000
    return {
        "mixed": pl.DataFrame(
            {
                "i": pl.Series(range(n), dtype=pl.Int64),
                "u8": pl.Series([i % 256 for i in range(n)], dtype=pl.UInt8),
                "f": [i / 7 for i in range(n)],
                "b": [i % 3 == 0 for i in range(n)],
                "s": [f"row{i}" if i % 5 else None for i in range(n)],
                "cat": pl.Series(["a", "b", "a", "c"] * (n // 4), dtype=pl.Categorical),
                "enum": pl.Series(["lo", "hi"] * (n // 2), dtype=pl.Enum(["lo", "mid", "hi"])),
                "t": pl.datetime_range(
                    dt.datetime(2020, 1, 1),
                    dt.datetime(2020, 1, 1) + dt.timedelta(seconds=n - 1),
                    "1s",
                    eager=True,
                    time_zone="Europe/Berlin",
                ),
                "d": pl.Series([dt.date(2020, 1, 1) + dt.timedelta(days=i % 30) for i in range(n)]),
                "dur": pl.Series([dt.timedelta(milliseconds=i) for i in range(n)]),
                "lst": [[i, i + 1] if i % 2 else [] for i in range(n)],
                "struct": [{"x": i, "y": str(i)} for i in range(n)],
                "nulls": pl.Series([None] * n, dtype=pl.Float32),
            }
        ),
        "empty": pl.DataFrame(
            {"a": pl.Series([], dtype=pl.Int32), "b": pl.Series([], dtype=pl.Utf8)}
        ),
        "no_columns": pl.DataFrame(),
        "large": pl.DataFrame({"x": pl.arange(0, 1_000_000, eager=True), "y": [1.5] * 1_000_000}),
    }


FRAMES = _frames()


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_polars_dataframe_round_trip(tmp_path: Path, codec: str, name: str) -> None:
    df = FRAMES[name]
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(df, key="df")
        meta = store.get_metadata("df")
        back = store.get("df")
    assert type(back) is pl.DataFrame
    assert back.schema == df.schema
    assert back.equals(df, null_equal=True)
    assert (
        meta is not None and meta["handler"] == "polars" and meta["data_type"] == "polars.DataFrame"
    )


@pytest.mark.parametrize(
    "series",
    [
        pl.Series("named", [1, None, 3]),
        pl.Series("", ["a", "b"]),
        pl.Series("cat", ["x", "y", "x"], dtype=pl.Categorical),
        pl.Series("empty", [], dtype=pl.Float64),
    ],
    ids=["named", "unnamed", "categorical", "empty"],
)
def test_polars_series_round_trip(tmp_path: Path, codec: str, series: Any) -> None:
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(series, key="s")
        meta = store.get_metadata("s")
        back = store.get("s")
    assert type(back) is pl.Series
    assert back.name == series.name and back.dtype == series.dtype
    assert back.equals(series, null_equal=True)
    assert meta is not None and meta["handler"] == "polars"
