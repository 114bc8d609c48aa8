"""Key derivation: what must be equal, what must differ, and what cannot be keyed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attr
import numpy as np
import pandas as pd  # type: ignore[import-untyped, unused-ignore]
import pytest
from cacheness import CacheError, CacheKeyError, cacheness
from cacheness.keys import make_key, render_params
from cacheness.keys._files import _file_memo
from hypothesis import given, settings
from hypothesis import strategies as st


def k(**params: object) -> str:
    return make_key(params)


def test_kwargs_order_does_not_matter() -> None:
    assert k(a=1, b=2) == k(b=2, a=1)


@pytest.mark.parametrize(
    "values",
    [
        [1, 1.0, "1", True, b"1", None, 1 + 0j],
        [0, 0.0, False, "", b"", (), [], {}, set()],
        [[1, 2], (1, 2), {1, 2}, frozenset({1, 2})],
        [np.int64(1), np.float64(1.0), np.array(1), np.array([1]), 1],
    ],
    ids=["ones", "empties", "containers", "numpy_scalars"],
)
def test_values_of_different_types_give_different_keys(values: list[object]) -> None:
    keys = [k(x=v) for v in values]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("params", [{1: "a"}, {1: "a", "b": 2}, {"b": 2, None: 3}])
def test_parameter_names_must_be_strings(params: dict[Any, Any]) -> None:
    with pytest.raises(CacheKeyError, match="names are str, not"):
        make_key(params)


def test_dict_and_set_order_do_not_matter() -> None:
    assert k(x={"a": 1, "b": 2}) == k(x={"b": 2, "a": 1})
    assert k(x={3, 1, 2}) == k(x={2, 3, 1})


def test_nesting_is_unambiguous() -> None:
    assert k(x=["ab"]) != k(x=["a", "b"])
    assert k(x=[[1], 2]) != k(x=[1, [2]])
    assert k(a="b", c="d") != k(a="bc", d="")


def test_same_key_in_other_processes_with_other_hash_seeds() -> None:
    code = (
        "from cacheness.keys import make_key;"
        "print(make_key({'s': {'alpha', 'beta', 'gamma'}, 'd': {'z': 1, 'a': frozenset('xyz')}}))"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("0", "1", "12345")
    }
    here = k(s={"alpha", "beta", "gamma"}, d={"z": 1, "a": frozenset("xyz")})
    assert keys == {here}


def test_numpy_arrays_by_content_dtype_and_shape() -> None:
    a = np.arange(1_000_000, dtype=np.float64)
    b = a.copy()
    assert k(x=a) == k(x=b)
    b[500_000] += 1  # numpy's repr would elide the middle; the key must not
    assert k(x=a) != k(x=b)
    assert k(x=a) != k(x=a.astype(np.float32))
    assert k(x=a) != k(x=a.reshape(1000, 1000))
    # Memory layout is not part of the value.
    m = np.arange(12).reshape(3, 4)
    assert k(x=m) == k(x=np.asfortranarray(m))
    assert k(x=m[:, ::2]) == k(x=np.ascontiguousarray(m[:, ::2]))


def test_pandas_by_values_index_and_columns() -> None:
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert k(x=df) == k(x=df.copy())
    assert k(x=df) != k(x=df.rename(columns={"b": "c"}))
    assert k(x=df) != k(x=df.set_axis([5, 6, 7]))
    assert k(x=df) != k(x=df.astype({"a": "int32"}))
    changed = df.copy()
    changed.loc[1, "b"] = "Y"
    assert k(x=df) != k(x=changed)
    s = pd.Series([1.0, 2.0], name="v")
    assert k(x=s) != k(x=s.rename("w"))
    assert k(x=s) != k(x=s.to_frame())


def test_polars_by_values() -> None:
    pl = pytest.importorskip("polars")
    df = pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})
    assert k(x=df) == k(x=df.clone())
    assert k(x=df) != k(x=df.with_columns(pl.col("a") + 1))
    assert k(x=df) != k(x=df.rename({"a": "c"}))


def test_path_by_file_content(tmp_path: Path) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(b"one")
    first = k(p=f)
    g = tmp_path / "copy.bin"
    g.write_bytes(b"one")
    assert k(p=g) == first  # content, not name
    f.write_bytes(b"two")
    assert k(p=f) != first
    assert k(p=f) != k(p=str(f))


def test_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(1 << 16))
    before = k(p=f)
    st = f.stat()
    stamp = (str(f), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    assert stamp in _file_memo
    # Poison the memo: a re-read would give the real digest, the memo gives this one.
    _file_memo[stamp] = b"\x00" * 16
    assert k(p=f) != before
    _file_memo[stamp] = b"\x00" * 16
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # touched: read again
    assert k(p=f) == before


def test_directory_by_relative_names_and_contents(tmp_path: Path) -> None:
    def tree(root: Path, extra: str = "") -> Path:
        (root / "sub").mkdir(parents=True)
        (root / "a.txt").write_text("a")
        (root / "sub" / "b.txt").write_text("b" + extra)
        for i in range(10):
            (root / f"f{i}").write_bytes(bytes([i]) * 1000)
        return root

    one = tree(tmp_path / "one")
    two = tree(tmp_path / "elsewhere" / "two")
    assert k(d=one) == k(d=two)  # location is not part of the key
    three = tree(tmp_path / "three", extra="!")
    assert k(d=one) != k(d=three)
    (two / "sub" / "b.txt").rename(two / "sub" / "c.txt")
    assert k(d=one) != k(d=two)


def test_missing_path_is_a_key_error_naming_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(CacheKeyError, match="'src'"):
        k(src=tmp_path / "nope")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and Unix sockets are POSIX")
@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_directory_holding_a_file_without_content_is_a_key_error(
    tmp_path: Path, kind: str
) -> None:
    import socket

    (tmp_path / "data.txt").write_text("x")
    odd = tmp_path / "odd"
    if kind == "fifo":
        os.mkfifo(odd)  # opening it would block until a writer comes
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(odd))
    try:
        with pytest.raises(CacheKeyError, match="'src'") as err:
            k(src=tmp_path)
        assert "odd" in str(err.value) and "not a regular file" in str(err.value)
        with pytest.raises(CacheKeyError):
            k(src=odd)  # the file itself, too
    finally:
        if kind == "socket":
            sock.close()


def test_a_file_that_cannot_be_opened_is_a_key_error(tmp_path: Path) -> None:
    from cacheness.keys._files import _file_digest
    from cacheness.keys._wire import _Unkeyable

    f = tmp_path / "f"
    f.write_text("x")
    st = os.stat(f)
    f.unlink()
    f.mkdir()  # replaced by a directory after its stat: open() fails (EISDIR)
    with pytest.raises(_Unkeyable, match="cannot be read"):
        _file_digest(str(f), st)


def test_dataclasses_and_attrs_by_fields() -> None:
    @dataclasses.dataclass
    class P:
        x: int
        y: list[int]

    @attr.define
    class Q:
        x: int

    assert k(p=P(1, [2])) == k(p=P(1, [2]))
    assert k(p=P(1, [2])) != k(p=P(1, [3]))
    assert k(q=Q(1)) == k(q=Q(1))
    assert k(q=Q(1)) != k(q=Q(2))


class Plain:
    def __init__(self, items: set[str]) -> None:
        self.items = items


def test_other_objects_by_stable_reduction() -> None:
    assert k(o=Plain({"a", "b"})) == k(o=Plain({"b", "a"}))
    assert k(o=Plain({"a"})) != k(o=Plain({"b"}))


@pytest.mark.parametrize(
    "bad",
    [threading.Lock(), (x for x in range(3)), lambda: 1],
    ids=["lock", "generator", "lambda"],
)
def test_unkeyable_objects_raise_a_typed_error_naming_the_parameter(bad: object) -> None:
    with pytest.raises(CacheKeyError, match="'weird'") as info:
        k(weird=bad)
    assert isinstance(info.value, CacheError) and isinstance(info.value, ValueError)


def test_self_containing_value_is_a_key_error() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(CacheKeyError, match="itself"):
        k(x=loop)


def test_render_params_is_json_like_with_hashes_for_arrays() -> None:
    arr = np.arange(5)
    out = render_params({"a": 1, "b": [1, "x"], "c": arr, "d": {"k": (1, 2)}})
    assert out["a"] == 1 and out["b"] == [1, "x"] and out["d"] == {"k": [1, 2]}
    assert out["c"]["__type__"] == "numpy.ndarray"
    assert out["c"]["shape"] == [5] and out["c"]["dtype"] == "int64"
    assert out["c"]["hash"] == render_params({"c": arr.copy()})["c"]["hash"]


def test_reserved_names_go_through_on() -> None:
    with cacheness(metadata_backend="memory") as cache:
        key = cache.put("v", on={"ttl_seconds": 5, "description": "d", "data": 1})
        assert cache.get(on={"ttl_seconds": 5, "description": "d", "data": 1}) == "v"
        assert cache.get(on={"ttl_seconds": 5, "description": "d"}) is None
        # on= and keywords mix, and give the same key as keywords alone.
        assert cache.put("w", on={"model": "x"}, version=1) == cache.put("w", model="x", version=1)
        assert key == make_key({"ttl_seconds": 5, "description": "d", "data": 1})
        with pytest.raises(CacheKeyError, match="both"):
            cache.put("v", on={"model": "x"}, model="y")
        with pytest.raises(CacheKeyError, match="no key parameters"):
            cache.put("v")


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), json_like, min_size=1, max_size=5))
def test_key_ignores_dict_order_at_every_level(params: dict[str, object]) -> None:
    def reverse(v: object) -> object:
        if isinstance(v, dict):
            return {k: reverse(v[k]) for k in reversed(list(v))}
        if isinstance(v, list):
            return [reverse(x) for x in v]
        if isinstance(v, tuple):
            return tuple(reverse(x) for x in v)
        return v

    assert make_key(params) == make_key(reverse(params))  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(json_like, json_like)
def test_different_values_give_different_keys(a: object, b: object) -> None:
    def same(x: Any, y: Any) -> bool:
        # Equal and of the same types all the way down (1 == 1.0 == True must still differ).
        if type(x) is not type(y):
            return False
        if isinstance(x, list | tuple):
            return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y, strict=False))
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, float):
            return repr(x) == repr(y)  # 0.0 and -0.0 are different keys
        return bool(x == y)

    assert (make_key({"v": a}) == make_key({"v": b})) == same(a, b)


def test_local_classes_are_keyed_but_local_functions_are_not() -> None:
    def make() -> type:
        class Local:
            def __init__(self) -> None:
                self.v = 1

        return Local

    assert k(o=make()()) == k(o=make()())

    def local_fn() -> int:
        return 1

    with pytest.raises(CacheKeyError, match="'f'"):
        k(f=local_fn)
    assert k(f=len) != k(f=abs)
