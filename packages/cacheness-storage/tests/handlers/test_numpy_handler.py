from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cacheness.storage import BlobStore, CacheIntegrityError
from cacheness.storage.handlers import FrameReader, _framing
from cacheness.storage.handlers._numpy import NumpyHandler

STRUCT = np.dtype([("a", "<i4"), ("b", "<f8", (2,)), ("c", "S3")])
NESTED = np.dtype([("p", STRUCT), ("q", ">u2")])
ALIGNED = np.dtype({"names": ["x", "y"], "formats": ["u1", "<f8"]}, align=True)


def _arrays() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    out: dict[str, Any] = {
        "bool": rng.random(1000) > 0.5,
        "complex64": (rng.standard_normal(300) + 1j * rng.standard_normal(300)).astype("c8"),
        "complex128": rng.standard_normal(300) * (1 + 2j),
        "clongdouble": np.arange(10, dtype=np.clongdouble) * (1 + 1j),
        "float16": rng.standard_normal(500).astype(np.float16),
        "float32": rng.standard_normal(500).astype(np.float32),
        "float64_nan_inf": np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-310]),
        "longdouble": np.arange(20, dtype=np.longdouble) / 3,
        "datetime64_ns": np.arange("2020-01-01", "2020-03-01", dtype="datetime64[D]").astype(
            "datetime64[ns]"
        ),
        "datetime64_D_nat": np.array(["2020-01-01", "NaT", "1969-12-31"], dtype="datetime64[D]"),
        "timedelta64_us": np.arange(100, dtype="timedelta64[us]") * 7,
        "bytes_S5": np.array([b"ab", b"", b"abcde"], dtype="S5"),
        "unicode_U3": np.array(["é", "abc", ""], dtype="U3"),
        "void_V4": np.frombuffer(b"\x00\x01\x02\x03" * 5, dtype="V4"),
        "big_endian_i4": np.arange(50, dtype=">i4"),
        "big_endian_f8": np.linspace(0, 1, 50).astype(">f8"),
        "structured": np.array([(1, (2.5, 3.5), b"xy"), (-4, (0.0, -1.0), b"")], dtype=STRUCT),
        "nested_structured": np.zeros(4, dtype=NESTED),
        "aligned_struct": np.array([(1, 2.0), (3, 4.0)], dtype=ALIGNED),
        "subarray_dtype": np.zeros(3, dtype=np.dtype(("<i2", (2, 3)))),
        "zero_d": np.array(3.25),
        "zero_d_int": np.array(7, dtype=np.int8),
        "empty_1d": np.array([], dtype=np.float64),
        "empty_2d": np.empty((0, 5), dtype=np.int32),
        "empty_3d_f": np.empty((3, 0, 2), dtype=np.uint16, order="F"),
        "fortran_2d": np.asfortranarray(rng.standard_normal((120, 70))),
        "fortran_3d": np.asfortranarray(np.arange(60, dtype=np.int64).reshape(3, 4, 5)),
        "non_contiguous": np.arange(10_000, dtype=np.float64).reshape(100, 100)[::3, 1::2],
        "reversed_view": np.arange(1000, dtype=np.int32)[::-1],
        "transposed_view": np.arange(12.0).reshape(3, 4).T[:, 1:],
        "large_smooth": np.arange(600_000, dtype=np.float64),
        "large_random": rng.standard_normal(600_000),
        "int_grid": np.indices((40, 50, 3)).astype(np.int64),
    }
    for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        info = np.iinfo(t)
        out[t] = np.array([info.min, 0, info.max, 1], dtype=t)
    return out


ARRAYS = _arrays()


def _same(a: np.ndarray, b: Any) -> None:
    assert type(b) is np.ndarray
    assert b.dtype == a.dtype and b.dtype.str == a.dtype.str
    assert b.shape == a.shape
    assert b.flags.writeable
    if a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous:
        assert b.flags.f_contiguous
    else:
        assert b.flags.c_contiguous
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_array_round_trip(tmp_path: Path, codec: str, array_label: str, name: str) -> None:
    arr = ARRAYS[name]
    with BlobStore(tmp_path, compression=codec) as store:
        key = store.put(arr, key=name)
        back = store.get(key)
        meta = store.get_metadata(key)
    _same(arr, back)
    assert meta is not None and meta["handler"] == "numpy"
    assert meta["codec"] in ("none", array_label)
    back[...] = back  # writeable, and not a view of anything shared


def test_dtype_in_content_hash(tmp_path: Path) -> None:
    """Equal bytes with another dtype or shape are another entry, not the same one."""
    with BlobStore(tmp_path) as store:
        a = store.put(np.zeros(8, dtype=np.uint8))
        b = store.put(np.zeros(1, dtype=np.float64))
        c = store.put(np.zeros((2, 4), dtype=np.uint8))
        assert len({a, b, c}) == 3
        assert store.get(a).dtype == np.uint8 and store.get(b).dtype == np.float64
        assert store.get(c).shape == (2, 4)


def test_compressible_array_is_compressed(tmp_path: Path, codec: str, array_label: str) -> None:
    arr = np.arange(1_000_000, dtype=np.float64)  # smooth, sensor-like
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(arr, key="k")
        meta = store.get_metadata("k")
        back = store.get("k")
    assert meta is not None and meta["codec"] == array_label
    if codec != "none":
        assert meta["size"] * 20 < arr.nbytes
    _same(arr, back)


def test_incompressible_array_is_stored_raw(tmp_path: Path, codec: str) -> None:
    arr = np.random.default_rng(1).standard_normal(1_000_000)
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(arr, key="k")
        meta = store.get_metadata("k")
        back = store.get("k")
    assert meta is not None and meta["codec"] == "none"
    assert arr.nbytes <= meta["size"] < arr.nbytes + 4096
    _same(arr, back)


def test_object_arrays_fall_back_to_pickle(tmp_path: Path, codec: str) -> None:
    arr = np.array([1, "two", None, {"three": 3}, [4.0]], dtype=object)
    grid = np.empty((2, 2), dtype=object)
    grid[:] = [[1, "a"], [(2,), None]]
    with BlobStore(tmp_path, compression=codec) as store:
        for name, value in (("flat", arr), ("grid", grid)):
            store.put(value, key=name)
            back = store.get(name)
            assert type(back) is np.ndarray and back.dtype == object
            assert back.shape == value.shape and back.tolist() == value.tolist()
            meta = store.get_metadata(name)
            assert meta is not None and meta["handler"] == "pickle"


def test_numpy_subclasses_keep_their_type(tmp_path: Path) -> None:
    m = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    with BlobStore(tmp_path) as store:
        store.put(m, key="m")
        back = store.get("m")
    assert type(back) is np.ma.MaskedArray
    assert back.mask.tolist() == [False, True, False] and back.data.tolist() == [1.0, 2.0, 3.0]


def _segments(store: BlobStore, key: str) -> list[Any]:
    meta = store.get_metadata(key)
    assert meta is not None
    digest = meta["content_hash"].split(":", 1)[1]
    with store.blob_backend.open_read(digest) as raw:
        frame = FrameReader(raw, store._pm.codec(meta["codec"]))
        return list(frame._bufs[0][1])


@pytest.mark.parametrize("kind", ["smooth", "random"])
def test_streaming_chunked_framing(
    tmp_path: Path, codec: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large arrays are written in segments and streamed back through the hash check.

    The chunk constants are lowered so a 2 MB array takes the path a > 2 GB one takes.
    """
    from cacheness.storage import _loading

    monkeypatch.setattr(_framing, "COMPRESS_CHUNK", 64 * 1024)
    monkeypatch.setattr(_framing, "READ_CHUNK", 16 * 1024)
    monkeypatch.setattr(_framing, "SAMPLE_MIN", 256 * 1024)
    monkeypatch.setattr(_loading, "_SMALL_BLOB", 4096)
    rng = np.random.default_rng(3)
    arr = (
        np.arange(262_144, dtype=np.float64) if kind == "smooth" else rng.standard_normal(262_144)
    ).reshape(512, 512, order="F")
    arr = np.asfortranarray(arr)
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(arr, key="big")
        segments = _segments(store, "big")
        back = store.get("big")
    _same(arr, back)
    if codec != "none" and kind == "smooth":
        assert len(segments) == arr.nbytes // (64 * 1024)
        assert {s[0] for s in segments} == {"b"}
    else:
        assert segments == [["r", arr.nbytes, arr.nbytes]]


def test_corrupt_streamed_array_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cacheness.storage import _loading

    monkeypatch.setattr(_loading, "_SMALL_BLOB", 4096)
    arr = np.random.default_rng(4).standard_normal(100_000)
    with BlobStore(tmp_path, compression="none") as store:
        store.put(arr, key="k")
        meta = store.get_metadata("k")
        assert meta is not None
        path = store.blob_backend.path_for(meta["content_hash"].split(":", 1)[1])  # type: ignore[attr-defined]
        data = bytearray(path.read_bytes())
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(CacheIntegrityError):
            store.get("k")
        path.write_bytes(bytes(data[:-8]))  # truncated
        with pytest.raises(CacheIntegrityError):
            store.get("k")


def test_handler_without_store(tmp_path: Path) -> None:
    """The handler's own dump/load pair, as a plugin author would call it."""
    import io

    from cacheness.storage.codecs import Blosc2ZstdCodec

    arr = np.arange(100_000, dtype=np.int32).reshape(100, 1000)
    ser = NumpyHandler().dump(arr, Blosc2ZstdCodec())
    blob = b"".join(bytes(c) for c in ser.chunks)
    back = NumpyHandler().load(io.BytesIO(blob), ser.info, Blosc2ZstdCodec())
    _same(arr, back)


@pytest.mark.slow
def test_array_larger_than_2_gib(tmp_path: Path) -> None:
    """A real > 2 GiB array, raw and compressed (blosc2 chunks stay under its limit)."""
    arr = np.arange((2**31 + 2**20) // 8, dtype=np.float64)
    for codec in ("none", "lz4"):
        with BlobStore(tmp_path / codec, compression=codec) as store:
            store.put(arr, key="huge")
            back = store.get("huge")
            assert back.shape == arr.shape and back.dtype == arr.dtype
            assert np.array_equal(back, arr)
            del back
