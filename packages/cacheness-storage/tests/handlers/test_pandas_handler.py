from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cacheness.storage import BlobStore

pd = pytest.importorskip("pandas")

N = 2_000


def _frames() -> dict[str, Any]:
    rng = np.random.default_rng(11)
    frames: dict[str, Any] = {
        "mixed_numeric": pd.DataFrame(
            {
                "f64": rng.standard_normal(N),
                "f32": rng.standard_normal(N).astype(np.float32),
                "i64": rng.integers(-(10**12), 10**12, N),
                "u8": rng.integers(0, 255, N).astype(np.uint8),
                "b": rng.random(N) > 0.5,
                "c128": rng.standard_normal(N) * 1j,
                "smooth": np.arange(N, dtype=np.float64),
            }
        ),
        "nullable": pd.DataFrame(
            {
                "Int64": pd.array([1, None, -3] * (N // 3) + [4] * (N % 3), dtype="Int64"),
                "UInt8": pd.array([1, None] * (N // 2), dtype="UInt8"),
                "Float64": pd.array(
                    [0.5, None, np.nan] * (N // 3) + [1.0] * (N % 3), dtype="Float64"
                ),
                "boolean": pd.array(
                    [True, None, False] * (N // 3) + [True] * (N % 3), dtype="boolean"
                ),
                "string_na": pd.array(
                    ["a", None, "ccc"] * (N // 3) + ["d"] * (N % 3), dtype="string"
                ),
                "string_python": pd.array(["x", None] * (N // 2), dtype=pd.StringDtype("python")),
                "str_nan": pd.Series(["é", None, "zz"] * (N // 3) + ["q"] * (N % 3), dtype="str"),
            }
        ),
        "categorical": pd.DataFrame(
            {
                "unordered": pd.Categorical(
                    rng.choice(["b", "a", "c"], N), categories=["c", "b", "a", "unused"]
                ),
                "ordered": pd.Categorical(
                    rng.choice(["lo", "mid", "hi"], N), categories=["lo", "mid", "hi"], ordered=True
                ),
                "int_cats": pd.Categorical(rng.choice([10, 20, 30], N)),
                "with_nan": pd.Categorical(["x", None] * (N // 2)),
            }
        ),
        "datetimes": pd.DataFrame(
            {
                "naive_ns": pd.date_range("2020-01-01", periods=N, freq="h").as_unit("ns"),
                "naive_s": pd.date_range("1900-01-01", periods=N, freq="D").as_unit("s"),
                "utc": pd.date_range("2021-03-01", periods=N, freq="min", tz="UTC"),
                "berlin_dst": pd.date_range(
                    "2021-03-27", periods=N, freq="min", tz="Europe/Berlin"
                ),
                "fixed_offset": pd.date_range(
                    "2021-01-01",
                    periods=N,
                    freq="s",
                    tz=dt.timezone(dt.timedelta(hours=-5, minutes=-30)),
                ),
                "with_nat": pd.Series(
                    [pd.Timestamp("2020-01-01", tz="Asia/Tokyo"), pd.NaT] * (N // 2)
                ),
                "delta": pd.to_timedelta(np.arange(N), unit="s"),
            }
        ),
        "multiindex_both": pd.DataFrame(
            rng.standard_normal((N, 4)),
            index=pd.MultiIndex.from_arrays(
                [
                    rng.choice(["a", "b"], N),
                    np.arange(N) % 7,
                    pd.date_range("2020", periods=N, freq="D"),
                ],
                names=["letter", 7, None],
            ),
            columns=pd.MultiIndex.from_tuples(
                [("x", 1), ("x", 2), ("y", 1), ("y", 2)], names=["top", "sub"]
            ),
        ),
        "duplicate_columns": pd.DataFrame(
            [[1, 2.5, "a"], [3, 4.5, "b"]] * 50, columns=["a", "a", "b"]
        ),
        "int_and_mixed_labels": pd.DataFrame(
            {0: [1, 2], "0": [3, 4], 1.5: [5, 6], (1, "t"): [7, 8], None: [9, 10]}
        ),
        "empty_no_rows": pd.DataFrame(
            {"a": pd.Series([], dtype="int32"), "b": pd.Series([], dtype="str")}
        ),
        "empty_no_columns": pd.DataFrame(index=pd.Index([3, 1, 2], name="id")),
        "empty_both": pd.DataFrame(),
        "object_strings": pd.DataFrame(
            {"o": np.array(["a", None, "bb"] * 40 + ["é"] * 20_000, dtype=object)}
        ),
        "string_index": pd.DataFrame(
            {"v": np.arange(500)}, index=pd.Index([f"row{i}" for i in range(500)], name="r")
        ),
        "datetime_index_freq": pd.DataFrame(
            {"v": np.arange(300.0)},
            index=pd.date_range("2024-01-01", periods=300, freq="15min", tz="UTC", name="t"),
        ),
        "categorical_index": pd.DataFrame(
            {"v": [1, 2, 3]},
            index=pd.CategoricalIndex(["b", "a", "b"], categories=["b", "a"], ordered=True),
        ),
        "float_index_nan": pd.DataFrame({"v": [1, 2, 3]}, index=pd.Index([0.5, np.nan, -1.0])),
        "large_mixed": pd.DataFrame(
            {
                "f": rng.standard_normal(200_000),
                "i": rng.integers(0, 1000, 200_000),
                "cat": pd.Categorical(rng.choice(["r", "g", "b"], 200_000)),
                "s": rng.choice(["alpha", "beta", "gamma"], 200_000),
                "t": pd.date_range("2020", periods=200_000, freq="s"),
            }
        ),
    }
    frames["with_attrs"] = frames["mixed_numeric"].copy()
    frames["with_attrs"].attrs = {
        "source": "sensor",
        "version": 2,
        "tags": ["a", "b"],
        "nested": {"x": None},
    }
    frames["no_duplicate_labels_flag"] = pd.DataFrame({"a": [1]}).set_flags(
        allows_duplicate_labels=False
    )
    frames["index_reordered"] = frames["mixed_numeric"].sample(frac=1.0, random_state=1)
    return frames


FRAMES = _frames()


def _series() -> dict[str, Any]:
    rng = np.random.default_rng(5)
    out: dict[str, Any] = {
        "named_float": pd.Series(rng.standard_normal(1000), name="x"),
        "int_name": pd.Series([1, 2, 3], name=7),
        "tuple_name": pd.Series([1.5, 2.5], name=("a", 1)),
        "unnamed_str": pd.Series(["a", None, "c"], dtype="str"),
        "categorical": pd.Series(pd.Categorical(["x", "y", "x"], ordered=True), name="c"),
        "tz": pd.Series(pd.date_range("2020", periods=5, freq="D", tz="America/New_York")),
        "nullable": pd.Series([1, None, 3], dtype="Int64", index=["a", "b", "c"]),
        "multiindex": pd.Series(
            np.arange(6),
            index=pd.MultiIndex.from_product([["a", "b"], [1, 2, 3]], names=["l", "n"]),
        ),
        "empty": pd.Series([], dtype="float64", name="e"),
    }
    out["attrs"] = pd.Series([1, 2], name="s")
    out["attrs"].attrs = {"unit": "m"}
    return out


SERIES = _series()


def _round_trip(tmp_path: Path, codec: str, value: Any) -> tuple[Any, dict[str, Any]]:
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(value, key="v")
        meta = store.get_metadata("v")
        back = store.get("v")
    assert meta is not None
    return back, meta


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_dataframe_round_trip(tmp_path: Path, codec: str, name: str) -> None:
    df = FRAMES[name]
    back, meta = _round_trip(tmp_path, codec, df)
    assert type(back) is pd.DataFrame
    pd.testing.assert_frame_equal(back, df, check_exact=True, check_flags=True, check_freq=True)
    assert back.attrs == df.attrs
    assert list(back.dtypes.astype(str)) == list(df.dtypes.astype(str))
    assert meta["handler"] == "pandas", "stored columnar, not as a pickle"
    assert meta["data_type"] == "pandas.DataFrame"


@pytest.mark.parametrize("name", sorted(SERIES))
def test_series_round_trip(tmp_path: Path, codec: str, name: str) -> None:
    s = SERIES[name]
    back, meta = _round_trip(tmp_path, codec, s)
    assert type(back) is pd.Series
    pd.testing.assert_series_equal(back, s, check_exact=True, check_freq=True)
    assert back.name == s.name and type(back.name) is type(s.name)
    assert back.attrs == s.attrs
    assert meta["handler"] == "pandas"


def test_large_frame_streams_and_compresses(
    tmp_path: Path, codec: str, array_label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cacheness.storage import _loading
    from cacheness.storage.handlers import _framing

    monkeypatch.setattr(_loading, "_SMALL_BLOB", 4096)
    monkeypatch.setattr(_framing, "COMPRESS_CHUNK", 256 * 1024)
    df = FRAMES["large_mixed"]
    back, meta = _round_trip(tmp_path, codec, df)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert meta["codec"] == array_label
    if codec != "none":
        assert meta["size"] < df.memory_usage(deep=False).sum()
    # the numpy columns that came back are writeable
    back.loc[0, "f"] = 1.0


def test_columns_are_writeable(tmp_path: Path) -> None:
    back, _ = _round_trip(tmp_path, "lz4", FRAMES["mixed_numeric"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back.iloc[0, 0] = 123.0
        back["i64"] += 1
    assert back.iloc[0, 0] == 123.0


@pytest.mark.parametrize(
    "value",
    [
        pd.DataFrame({"p": pd.period_range("2020-01", periods=3, freq="M")}),
        pd.DataFrame({"o": [1, "a", None] * 5000}),
        pd.DataFrame({"o": [{"a": 1}, [2], (3,)]}),
        pd.DataFrame([[1, 2]], columns=pd.Index(["a", pd.Timestamp("2020-01-01")], dtype=object)),
    ],
    ids=["period", "mixed_object", "containers", "timestamp_label"],
)
def test_unsupported_columns_fall_back_to_pickle(tmp_path: Path, codec: str, value: Any) -> None:
    back, meta = _round_trip(tmp_path, codec, value)
    pd.testing.assert_frame_equal(back, value, check_exact=True)
    assert meta["handler"] == "pickle"


def test_small_mixed_object_column_is_columnar(tmp_path: Path, codec: str) -> None:
    df = pd.DataFrame({"o": [1, "a", None, 2.5, True, ("t", 1)]})
    back, meta = _round_trip(tmp_path, codec, df)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert [type(v) for v in back["o"]] == [type(v) for v in df["o"]]
    assert meta["handler"] == "pandas"


def test_attrs_json_cannot_hold_fall_back_to_pickle(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1, 2]})
    df.attrs = {"when": (1, 2), "arr": np.arange(3)}
    back, meta = _round_trip(tmp_path, "lz4", df)
    assert meta["handler"] == "pickle"
    assert back.attrs["when"] == (1, 2) and np.array_equal(back.attrs["arr"], np.arange(3))


def test_subclass_keeps_its_type(tmp_path: Path) -> None:
    back, meta = _round_trip(tmp_path, "lz4", _Sub({"a": [1, 2]}))
    assert type(back) is _Sub and meta["handler"] == "pickle"


class _Sub(pd.DataFrame):
    @property
    def _constructor(self) -> type[_Sub]:
        return _Sub
