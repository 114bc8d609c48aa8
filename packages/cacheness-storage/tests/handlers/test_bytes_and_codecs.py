from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cacheness.storage import BlobStore, CacheConfigError, PluginManager, hookimpl
from cacheness.storage.abc import TypeHandler
from cacheness.storage.codecs import BLOSC2_INNER_CODECS, BUILTIN_CODECS, Blosc2Codec, _builtin


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"", bytes),
        (b"\x00\xff" * 10, bytes),
        (b"abc" * 100_000, bytes),
        (bytearray(b"xyz" * 1000), bytearray),
        (bytearray(), bytearray),
        (memoryview(b"view" * 500), bytes),
        (memoryview(np.arange(1000, dtype=np.int32)), bytes),
        (memoryview(np.arange(100, dtype=np.uint8).reshape(10, 10))[::2], bytes),
    ],
    ids=[
        "empty",
        "binary",
        "compressible",
        "bytearray",
        "empty_bytearray",
        "memoryview",
        "typed_memoryview",
        "strided_memoryview",
    ],
)
def test_bytes_like_round_trip(tmp_path: Path, codec: str, value: Any, kind: type) -> None:
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(value, key="b")
        back = store.get("b")
        meta = store.get_metadata("b")
    assert type(back) is kind
    assert back == (value.tobytes() if isinstance(value, memoryview) else value)
    assert meta is not None and meta["handler"] == "bytes"
    if len(back) < 256:
        assert meta["codec"] == "none", "small values skip compression"


def test_compressible_bytes_record_the_codec(tmp_path: Path, codec: str) -> None:
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(b"abc" * 100_000, key="b")
        meta = store.get_metadata("b")
    expected = "blosc2:lz4" if codec == "blosc2" else codec
    assert meta is not None and meta["codec"] == expected
    if codec != "none":
        assert meta["size"] < 30_000


def test_incompressible_bytes_stored_raw(tmp_path: Path, codec: str) -> None:
    data = np.random.default_rng(0).bytes(100_000)
    with BlobStore(tmp_path, compression=codec) as store:
        store.put(data, key="b")
        meta = store.get_metadata("b")
        assert store.get("b") == data
    assert meta is not None and meta["codec"] == "none" and meta["size"] == len(data)


VALUES: dict[str, Any] = {
    "array": np.arange(200_000, dtype=np.float64),
    "dict": {"arr": np.arange(100_000), "text": "t" * 10_000},
    "bytes": b"0123456789" * 10_000,
    "pickle": list(range(20_000)),
}
# pandas is an optional extra of cacheness-storage: the storage_only session runs without it.
if importlib.util.find_spec("pandas") is not None:
    import pandas as pd

    VALUES["frame"] = pd.DataFrame({"a": np.arange(50_000), "s": ["x", "yy"] * 25_000})


@pytest.mark.parametrize("second", ["none", "lz4", "zstd", "gzip", "blosc2", "blosc2:blosclz"])
def test_entries_read_back_after_the_default_changes(
    tmp_path: Path, codec: str, second: str
) -> None:
    with BlobStore(tmp_path, compression=codec) as store:
        for name, value in VALUES.items():
            store.put(value, key=name)
        written = {k: store.get_metadata(k)["codec"] for k in VALUES}  # type: ignore[index]
    with BlobStore(tmp_path, compression=second) as store:
        for name, value in VALUES.items():
            back = store.get(name)
            if isinstance(value, np.ndarray):
                assert np.array_equal(back, value) and back.dtype == value.dtype
            elif name == "frame":
                pd.testing.assert_frame_equal(back, value, check_exact=True)
            elif name == "dict":
                assert np.array_equal(back["arr"], value["arr"]) and back["text"] == value["text"]
            else:
                assert back == value
            assert store.get_metadata(name)["codec"] == written[name]  # type: ignore[index]
        assert store.verify().ok


def test_every_recorded_label_is_a_registered_codec() -> None:
    pm = PluginManager(load_entrypoints=False)
    names = set(pm.codecs())
    assert {"none", "lz4", "zstd", "gzip", "blosc2"} <= names
    assert {f"blosc2:{inner}" for inner in BLOSC2_INNER_CODECS} <= names
    for cls in BUILTIN_CODECS:
        assert cls().label in names


@pytest.mark.parametrize("name", ["lz4", "zstd", "gzip", "blosc2", "blosc2:zstd"])
def test_compression_level(tmp_path: Path, name: str) -> None:
    data = np.arange(300_000, dtype=np.int64)
    sizes = []
    for level in (1, 9):
        with BlobStore(tmp_path / f"{level}", compression=name, compression_level=level) as store:
            store.put(data, key="a")
            store.put(b"some text " * 20_000, key="b")
            assert np.array_equal(store.get("a"), data)
            assert store.get("b") == b"some text " * 20_000
            sizes.append(store.get_metadata("b")["size"])  # type: ignore[index]
    assert sizes[1] <= sizes[0]


def test_bad_compression_settings() -> None:
    with pytest.raises(CacheConfigError, match="lz5"):
        BlobStore(backend="memory", blob_backend="memory", compression="lz5")
    with pytest.raises(CacheConfigError, match="compression_level"):
        BlobStore(backend="memory", blob_backend="memory", compression="gzip", compression_level=42)


@pytest.mark.parametrize("inner", BLOSC2_INNER_CODECS)
def test_blosc2_codec_over_its_buffer_limit(inner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain-bytes blosc2 splits buffers above its 2 GiB limit (lowered here)."""
    monkeypatch.setattr(_builtin, "_BLOSC2_MAX", 10_000)
    codec = PluginManager(load_entrypoints=False).codec(f"blosc2:{inner}")
    assert isinstance(codec, Blosc2Codec) and codec.label == f"blosc2:{inner}"
    data = b"".join(b"row %d of the cache;" % (i % 300) for i in range(3000))
    packed = codec.encode(data)
    assert len(packed) < len(data) and codec.decode(packed) == data
    assert Blosc2Codec().decode(codec.encode(b"abc" * 10)) == b"abc" * 10


class Point:
    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y


class PointHandler(TypeHandler):
    name = "point"
    types = (Point,)

    def dumps(self, obj: Any) -> bytes:
        return f"{obj.x},{obj.y}".encode()

    def loads(self, data: bytes) -> Any:
        x, y = data.decode().split(",")
        return Point(float(x), float(y))


class MyArrayHandler(TypeHandler):
    name = "my-array"
    types = (np.ndarray,)
    priority = 10

    def dumps(self, obj: Any) -> bytes:
        return np.asarray(obj, dtype=np.float64).tobytes()

    def loads(self, data: bytes) -> Any:
        return np.frombuffer(data, dtype=np.float64).copy()


class _Plugin:
    @hookimpl
    def cacheness_register_handlers(self) -> list[type[TypeHandler]]:
        return [PointHandler, MyArrayHandler]


def test_third_party_handler_wins_for_its_type(tmp_path: Path) -> None:
    pm = PluginManager(load_entrypoints=False)
    pm.register_module(_Plugin(), name="test-plugin")
    with BlobStore(tmp_path, plugin_manager=pm) as store:
        store.put(Point(1.5, -2.0), key="p")
        store.put(np.arange(4.0), key="a")
        store.put({"still": "pickle"}, key="d")
        p, a = store.get("p"), store.get("a")
        handlers = {k: store.get_metadata(k)["handler"] for k in ("p", "a", "d")}  # type: ignore[index]
    assert (p.x, p.y) == (1.5, -2.0)
    assert np.array_equal(a, np.arange(4.0))
    assert handlers == {"p": "point", "a": "my-array", "d": "pickle"}
    # Without the plugin the built-ins are chosen again.
    with BlobStore(tmp_path / "plain", plugin_manager=PluginManager(load_entrypoints=False)) as s:
        s.put(np.arange(4.0), key="a")
        assert s.get_metadata("a")["handler"] == "numpy"  # type: ignore[index]


def test_storing_plain_values_imports_no_heavy_library(tmp_path: Path) -> None:
    code = f"""
import sys
from cacheness.storage import BlobStore
with BlobStore({str(tmp_path)!r}) as s:
    s.put({{"a": [1, 2]}}, key="d"); s.put(b"raw" * 1000, key="b"); s.put("text", key="t")
    assert s.get("d") == {{"a": [1, 2]}} and s.get("b") == b"raw" * 1000
heavy = sorted(m for m in ("numpy", "pandas", "polars", "pyarrow", "dill", "blosc2") if m in sys.modules)
print(",".join(heavy))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_numpy_values_do_not_import_pandas_or_polars(tmp_path: Path) -> None:
    code = f"""
import sys
import numpy as np
from cacheness.storage import BlobStore
with BlobStore({str(tmp_path)!r}) as s:
    s.put(np.arange(100_000.0), key="a"); s.put({{"x": np.ones(100_000)}}, key="d")
    assert s.get("a")[5] == 5.0 and s.get("d")["x"].sum() == 100_000
print(",".join(m for m in ("pandas", "polars", "pyarrow", "dill") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
