from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cacheness.storage import BlobStore, CacheSerializationError


@dataclasses.dataclass
class Experiment:
    name: str
    weights: np.ndarray
    extra: dict[str, Any]


def _big_dict() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "smooth": np.arange(200_000, dtype=np.float64),
        "noise": rng.standard_normal(100_000).astype(np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((300, 200))),
        "small": np.arange(5),
        "nested": [np.ones((64, 1024), dtype=np.int16), {"deep": np.zeros(70_000, np.uint8)}],
        "text": "hello",
    }


def _check_dict(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in ("smooth", "noise", "fortran", "small"):
        assert b[k].dtype == a[k].dtype and np.array_equal(a[k], b[k])
        assert b[k].flags.writeable
    assert b["fortran"].flags.f_contiguous
    assert np.array_equal(a["nested"][0], b["nested"][0]) and b["nested"][0].flags.writeable
    assert np.array_equal(a["nested"][1]["deep"], b["nested"][1]["deep"])
    assert b["text"] == "hello"


def test_dict_of_arrays_out_of_band(tmp_path: Path, codec: str, array_label: str) -> None:
    value = _big_dict()
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(value, key="d")
        meta = store.get_metadata("d")
        back = store.get("d")
    assert meta is not None and meta["handler"] == "pickle"
    assert meta["codec"] == array_label
    _check_dict(value, back)
    back["smooth"][0] = 42.0  # writeable views of a private buffer
    assert value["smooth"][0] == 0.0


def test_large_dict_read_whole_and_in_place(
    tmp_path: Path, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the small-blob size the store reads pickles into fresh writable memory."""
    from cacheness.storage import _loading

    monkeypatch.setattr(_loading, "_SMALL_BLOB", 1024)
    value = _big_dict()
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(value, key="d")
        back = store.get("d")
    _check_dict(value, back)


def test_out_of_band_arrays_are_not_copied_into_the_pickle(tmp_path: Path) -> None:
    arr = np.random.default_rng(2).standard_normal(500_000)
    with BlobStore(tmp_path, compression="none") as store:
        store.put({"a": arr, "b": arr[::2].copy()}, key="d")
        meta = store.get_metadata("d")
    assert meta is not None
    # the arrays plus a small pickle stream and header, not twice the arrays
    assert meta["size"] < arr.nbytes * 1.5 + 4096


def test_dataclass_with_arrays(tmp_path: Path, codec: str) -> None:
    exp = Experiment("run-1", np.linspace(0, 1, 100_000), {"lr": 0.1, "tags": ("a", "b")})
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(exp, key="e")
        back = store.get("e")
    assert type(back) is Experiment and back.name == "run-1" and back.extra == exp.extra
    assert np.array_equal(back.weights, exp.weights) and back.weights.flags.writeable


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -(2**70),
        3.5,
        complex(1, -2),
        "ünïcode",
        [1, "a", None, (2, 3)],
        {"a": {"b": [1, 2, {3}]}, 4: frozenset({5})},
        {"big": "x" * 100_000},
        list(range(50_000)),
        Experiment("x", np.arange(3), {}),
    ],
    ids=lambda v: type(v).__name__,
)
def test_python_objects(tmp_path: Path, codec: str, value: Any) -> None:
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(value, key="v")
        back = store.get("v")
        meta = store.get_metadata("v")
    assert type(back) is type(value)
    if isinstance(value, Experiment):
        assert back.name == value.name and np.array_equal(back.weights, value.weights)
    else:
        assert back == value
    assert meta is not None and meta["handler"] == "pickle"


def test_small_values_skip_compression(tmp_path: Path, codec: str) -> None:
    with BlobStore(tmp_path, compression=codec) as store:
        store.put({"a": 1}, key="small")
        store.put({"a": "x" * 50_000}, key="big")
        small, big = store.get_metadata("small"), store.get_metadata("big")
        assert store.get("small") == {"a": 1} and store.get("big") == {"a": "x" * 50_000}
    assert small is not None and small["codec"] == "none"
    assert big is not None
    assert big["codec"] == codec if codec != "blosc2" else big["codec"] == "blosc2:lz4"
    if codec != "none":
        assert big["size"] < 5000


def _make_closure() -> Any:
    offset = 10

    def add(x: int) -> int:
        return x + offset

    return add


def _local_class() -> Any:
    class Local:
        def __init__(self, v: int) -> None:
            self.v = v

        def __eq__(self, other: object) -> bool:
            return type(other).__name__ == "Local" and getattr(other, "v", None) == self.v

    return Local(5)


@pytest.mark.parametrize("kind", ["lambda", "closure", "local_class", "lambda_in_dict"])
def test_dill_for_what_pickle_cannot_do(tmp_path: Path, codec: str, kind: str) -> None:
    pytest.importorskip("dill")
    value: Any = {
        "lambda": lambda x: x * 3,
        "closure": _make_closure(),
        "local_class": _local_class(),
        "lambda_in_dict": {"f": lambda x: x - 1, "arr": np.arange(100_000)},
    }[kind]
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(value, key="f")
        meta = store.get_metadata("f")
        back = store.get("f")
    assert meta is not None and meta["handler"] == "dill"
    if kind == "lambda":
        assert back(4) == 12
    elif kind == "closure":
        assert back(1) == 11
    elif kind == "local_class":
        assert back == value and type(back).__name__ == "Local"
    else:
        assert back["f"](1) == 0 and np.array_equal(back["arr"], np.arange(100_000))


def test_pickle_is_tried_before_dill(tmp_path: Path) -> None:
    with BlobStore(tmp_path) as store:
        store.put({"plain": [1, 2]}, key="k")
        meta = store.get_metadata("k")
    assert meta is not None and meta["handler"] == "pickle"


def test_dill_refused_when_not_allowed(tmp_path: Path) -> None:
    with BlobStore(tmp_path, allow_dill=False) as store:
        store.put(1, key="before")
        with pytest.raises(CacheSerializationError, match="function"):
            store.put(lambda x: x, key="f")
        assert store.list() == ["before"]


def test_dill_off_with_require_signatures(tmp_path: Path) -> None:
    with BlobStore(tmp_path, signing_key=b"k" * 32, require_signatures=True) as store:
        assert store.allow_dill is False
        with pytest.raises(CacheSerializationError):
            store.put(_make_closure(), key="f")
        assert store.list() == []


@pytest.mark.parametrize("allow_dill", [False, True])
def test_unserialisable_leaves_store_unchanged(
    tmp_path: Path, codec: str, allow_dill: bool
) -> None:
    # pickle cannot do a lock; dill can do a lock but not a generator.
    bad = {"lock": threading.Lock(), "gen": (i for i in range(3))}
    if not allow_dill:
        bad = {"lock": threading.Lock()}
    with BlobStore(tmp_path, compression=codec, allow_dill=allow_dill) as store:
        store.put({"ok": 1}, key="ok")
        before = store.list()
        with pytest.raises(CacheSerializationError) as info:
            store.put(bad, key="bad")
        message = str(info.value)
        assert "dict" in message and ("lock" in message or "generator" in message)
        assert info.value.key == "bad"
        assert store.list() == before and store.get("bad") is None
        assert store.verify().ok
