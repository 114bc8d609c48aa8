"""The checked-in table of (key parameters -> key) must never change silently.

A change to the canonical encoding changes keys users already have on disk.
If a change is deliberate, bump ``KEY_VERSION`` in ``cacheness/keys/_key.py`` and
regenerate the table: ``python packages/cacheness/tests/unit/test_key_stability.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped, unused-ignore]
import pytest
from cacheness import KEY_VERSION, UnifiedCache
from cacheness.keys import make_key
from cacheness.storage.errors import CacheKeyError

TABLE = Path(__file__).resolve().parent.parent / "data" / "key_stability.json"


class Color(enum.Enum):
    RED = 1
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: int
    y: float = 0.0


# Classes are keyed by module and name; pin the module so that running this file
# as a script (to regenerate) and under pytest give the same keys.
Color.__module__ = Point.__module__ = "key_table"


def _cases() -> dict[str, dict[str, Any]]:
    """Every kind of key parameter, written out (no randomness, no platform data)."""
    return {
        "str": {"model": "xgboost", "version": "1.0"},
        "int": {"n": 1},
        "float": {"n": 1.0},
        "str_one": {"n": "1"},
        "true": {"n": True},
        "none": {"n": None},
        "big_int": {"n": 2**100},
        "neg_int": {"n": -12345},
        "nan": {"x": float("nan")},
        "inf": {"x": float("-inf")},
        "unicode": {"name": "zürich ✓ 日本"},
        "str_empty": {"s": ""},
        "str_255_bytes": {"s": "é" * 127 + "x"},
        "str_long": {"s": "x" * 300},
        "str_surrogate": {"s": "a\ud800b"},  # a lone surrogate (from os.fsdecode, say)
        "bytes": {"b": b"\x00\x01abc"},
        "list": {"xs": [1, 2, 3]},
        "tuple": {"xs": (1, 2, 3)},
        "nested": {"cfg": {"layers": [64, 32], "opt": {"lr": 0.01, "name": "adam"}}},
        "set": {"s": {"b", "a", "c"}},
        "frozenset": {"s": frozenset({3, 1, 2})},
        "empty_containers": {"a": [], "b": (), "c": {}, "d": set()},
        "date": {"d": dt.date(2024, 1, 31)},
        "datetime_naive": {"d": dt.datetime(2024, 1, 31, 12, 30, 5, 123456)},
        "datetime_utc": {"d": dt.datetime(2024, 1, 31, 12, 30, tzinfo=dt.UTC)},
        "timedelta": {"d": dt.timedelta(days=1, seconds=5)},
        "decimal": {"d": decimal.Decimal("1.10")},
        "complex": {"c": complex(1, -2)},
        "uuid": {"u": uuid.UUID("12345678-1234-5678-1234-567812345678")},
        "enum": {"c": Color.RED, "d": Color.BLUE},
        "dataclass": {"p": Point(1, 2.5)},
        "np_f64": {"a": np.arange(12, dtype=np.float64).reshape(3, 4)},
        "np_i32": {"a": np.arange(12, dtype=np.int32)},
        "np_fortran": {"a": np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4))},
        "np_big_endian": {"a": np.arange(4, dtype=">i4")},
        "np_bool": {"a": np.array([True, False])},
        "np_datetime": {"a": np.array(["2024-01-01", "2024-01-02"], dtype="M8[ns]")},
        "np_structured": {"a": np.zeros(2, dtype=[("x", "<i4"), ("y", "<f8")])},
        "np_object": {"a": np.array(["x", 1, None], dtype=object)},
        "np_scalar": {"a": np.float32(1.5)},
        "np_0d": {"a": np.array(7, dtype=np.int16)},
        "pd_frame": {
            "df": pd.DataFrame(
                {"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "c": ["x", "y", "z"]},
                index=pd.Index([10, 20, 30], name="id"),
            )
        },
        "pd_series": {"s": pd.Series([1.0, 2.0], index=["a", "b"], name="v")},
        "pd_categorical": {"s": pd.Series(["a", "b", "a"], dtype="category")},
        "pd_datetime_tz": {
            "s": pd.Series(pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC"))
        },
        "pd_timestamp": {"t": pd.Timestamp("2024-01-01 00:00:00.000000001")},
        "pd_multiindex": {
            "df": pd.DataFrame({"v": [1, 2]}, index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)]))
        },
        "reserved_via_on": {"ttl_seconds": 5, "model": "x"},
        "many_params": {f"p{i}": i for i in range(20)},
    }


def compute_table() -> dict[str, str]:
    return {name: make_key(params) for name, params in _cases().items()}


def test_key_version_is_the_tabled_one() -> None:
    table = json.loads(TABLE.read_text())
    assert table["key_version"] == KEY_VERSION, (
        "KEY_VERSION changed: regenerate tests/data/key_stability.json on purpose"
    )


@pytest.mark.parametrize("name", sorted(_cases()))
def test_key_is_unchanged(name: str) -> None:
    table = json.loads(TABLE.read_text())["keys"]
    assert name in table, f"case {name!r} is not in the table; regenerate it"
    assert make_key(_cases()[name]) == table[name], (
        f"the key of case {name!r} changed: that breaks every existing cache. If this is "
        "deliberate, bump KEY_VERSION and regenerate the table"
    )


def test_remembered_str_keys_are_the_computed_ones() -> None:
    # make_key remembers the keys of one-str calls. Keys computed in a fresh
    # process (nothing remembered) must equal this process's, read twice over
    # more distinct values than it remembers, so some come from memory and some
    # are computed again after the memory was emptied.
    values = [f"v{i}" for i in range(12_000)] + ["", "a\ud800b", "é" * 300]
    code = (
        "import json, sys; from cacheness.keys import make_key; "
        "print(json.dumps([make_key({'s': v}) for v in json.load(sys.stdin)]))"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        check=True,
    )
    expected = json.loads(fresh.stdout)
    for _ in range(2):
        assert [make_key({"s": v}) for v in values] == expected
    table = json.loads(TABLE.read_text())["keys"]
    for name in ("str_empty", "str_255_bytes", "str_surrogate"):
        for _ in range(2):
            assert make_key(_cases()[name]) == table[name]


def test_table_keys_are_all_different() -> None:
    keys = json.loads(TABLE.read_text())["keys"]
    assert len(set(keys.values())) == len(keys)


def test_cache_uses_the_tabled_keys() -> None:
    with UnifiedCache(metadata_backend="memory") as cache:
        assert (
            cache.put(1, model="xgboost", version="1.0")
            == json.loads(TABLE.read_text())["keys"]["str"]
        )
        assert (
            cache.put(2, on={"ttl_seconds": 5, "model": "x"}) == compute_table()["reserved_via_on"]
        )


if __name__ == "__main__":
    TABLE.write_text(
        json.dumps({"key_version": KEY_VERSION, "keys": compute_table()}, indent=2) + "\n"
    )
    print(f"wrote {TABLE}")


def test_remembered_str_keys_stay_bounded() -> None:
    # Many distinct keys (a 1,000,000-entry cache) must not grow the memory of
    # computed keys past its bound, under one parameter name or several.
    from cacheness.keys import _key

    for i in range(3 * _key._MEMO_ENTRIES):
        make_key({"item" if i % 3 else "other": f"k{i}"})
    remembered = sum(len(m) for m in _key._str_memo.values())
    assert 0 < remembered <= _key._MEMO_ENTRIES
    assert remembered == _key._memo_size


def test_a_str_subclass_name_is_refused_whatever_was_keyed_before() -> None:
    class Name(str):
        pass

    for params in ({Name("item"): "x"}, {Name("other"): 1, "item": 2}):
        with pytest.raises(CacheKeyError):
            make_key(params)
        make_key({str(k): v for k, v in params.items()})  # the plain names, now cached
        with pytest.raises(CacheKeyError):
            make_key(params)
