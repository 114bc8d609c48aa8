"""Cache keys: a canonical, versioned encoding of key parameters, hashed with XXH3-128.

The key of ``cache.put(data, model="x", version=1)`` is the same in every
process, run, platform and supported Python version, because it never goes
through ``hash()`` (salted per process), ``repr()`` (numpy truncates large
arrays) or plain pickle (set order follows the salted ``hash()``).

Every value is written as a type tag followed by length-prefixed bytes, so
``1``, ``1.0``, ``"1"`` and ``True`` differ, a list differs from a tuple, and
no two different values can run into each other. Dict items and set members
are sorted by their encoded bytes, so their order does not matter. Large
values (arrays, frames, files) are reduced to a digest of their buffers.

:data:`KEY_VERSION` names this encoding. Changing what any value encodes to
changes keys users already have on disk, so it needs a deliberate bump;
``tests/data/key_stability.json`` fails the build otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import math
import os
import pathlib
import struct
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import xxhash

from cacheness.storage.errors import CacheKeyError

__all__ = [
    "KEY_VERSION",
    "RESERVED_NAMES",
    "encode_value",
    "make_key",
    "render_params",
    "value_digest",
]

#: Version of the canonical encoding; part of every hashed key.
KEY_VERSION = 1
_KEY_HEADER = b"cacheness-key\x00v1\x00"

#: Keyword names of ``put``/``get`` and friends that are never key parameters
#: (``on={...}`` carries key parameters with these names).
RESERVED_NAMES = frozenset(
    {
        "ttl_seconds",
        "metadata",
        "description",
        "on",
        "cache_key",
        "custom_metadata",
        "default",
        "strict_verification",
    }
)

_MAX_DEPTH = 100
_FILE_CHUNK = 8 * 1024 * 1024
_Q = struct.Struct("<Q")
_D = struct.Struct("<d")
_NAN = struct.pack("<Q", 0x7FF8000000000000)


class _Unkeyable(Exception):
    """Internal: a value cannot be encoded; turned into CacheKeyError naming the parameter."""


def _blob(tag: bytes, payload: bytes) -> bytes:
    return tag + _Q.pack(len(payload)) + payload


def _enc_str(v: str) -> bytes:
    return _blob(b"s", v.encode("utf-8", "surrogatepass"))


def _enc_int(v: int) -> bytes:
    return _blob(b"i", v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True))


def _enc_float(v: float) -> bytes:
    return b"f" + (_NAN if v != v else _D.pack(v))


def _enc_bytes(v: bytes) -> bytes:
    return _blob(b"b", bytes(v))


_SIMPLE: dict[type, Callable[[Any], bytes]] = {
    str: _enc_str,
    int: _enc_int,
    float: _enc_float,
    bytes: _enc_bytes,
    bool: lambda v: b"T" if v else b"F",
    type(None): lambda v: b"N",
}


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', obj.__name__)}"


class _Encoder:
    """Turns one value into canonical bytes. Not thread-safe; cheap to create."""

    def __init__(self) -> None:
        self.depth = 0
        self.seen: set[int] = set()

    def encode(self, v: Any) -> bytes:
        simple = _SIMPLE.get(type(v))
        if simple is not None:
            return simple(v)
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _Unkeyable(f"it is nested more than {_MAX_DEPTH} levels deep")
        oid = id(v)
        if oid in self.seen:
            raise _Unkeyable("it contains itself (a reference cycle)")
        self.seen.add(oid)
        try:
            return self._encode_complex(v)
        finally:
            self.seen.discard(oid)
            self.depth -= 1

    def _seq(self, tag: bytes, items: Any) -> bytes:
        parts = [self.encode(x) for x in items]
        return tag + _Q.pack(len(parts)) + b"".join(parts)

    def _mapping(self, tag: bytes, items: Any) -> bytes:
        pairs = sorted(self.encode(k) + self.encode(x) for k, x in items)
        return tag + _Q.pack(len(pairs)) + b"".join(pairs)

    def _set(self, tag: bytes, items: Any) -> bytes:
        parts = sorted(self.encode(x) for x in items)
        return tag + _Q.pack(len(parts)) + b"".join(parts)

    def _encode_complex(self, v: Any) -> bytes:
        t = type(v)
        if t is list:
            return self._seq(b"l", v)
        if t is tuple:
            return self._seq(b"t", v)
        if t is dict:
            return self._mapping(b"d", v.items())
        if t is set or t is frozenset:
            return self._set(b"S" if t is set else b"Z", v)
        if isinstance(v, enum.Enum):
            return _blob(b"E", _qualname(t).encode()) + self.encode(v.value)
        module = t.__module__ or ""
        if module == "numpy" or module.startswith("numpy."):
            return _numpy(v, self)
        if module.startswith("pandas."):
            return _pandas(v, self)
        if module.startswith("polars"):
            return _polars(v, self)
        if isinstance(v, pathlib.PurePath):
            return _path(v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            fields = [(f.name, getattr(v, f.name)) for f in dataclasses.fields(v)]
            return _blob(b"C", _qualname(t).encode()) + self._mapping(b"d", fields)
        attrs_fields = getattr(t, "__attrs_attrs__", None)
        if attrs_fields is not None:
            fields = [(a.name, getattr(v, a.name)) for a in attrs_fields]
            return _blob(b"A", _qualname(t).encode()) + self._mapping(b"d", fields)
        if isinstance(v, _dt.datetime):
            return _blob(b"W", v.isoformat().encode()) + _blob(b"w", repr(v.tzinfo).encode())
        if isinstance(v, _dt.date | _dt.time | _dt.timedelta):
            return _blob(b"D", f"{t.__name__}:{v!r}".encode())
        if isinstance(v, decimal.Decimal):
            return _blob(b"M", str(v).encode())
        if isinstance(v, complex):
            return b"c" + _enc_float(v.real) + _enc_float(v.imag)
        if isinstance(v, uuid.UUID):
            return _blob(b"U", v.bytes)
        if isinstance(v, bytearray | memoryview):
            return _blob(b"y", bytes(v))
        if isinstance(v, range):
            return b"r" + self._seq(b"t", (v.start, v.stop, v.step))
        if isinstance(v, str | int | float | bytes):
            # A subclass of a builtin (not an Enum): keyed by class and value.
            base: Any = next(b for b in (int, float, str, bytes) if isinstance(v, b))
            return _blob(b"X", _qualname(t).encode()) + _SIMPLE[base](base(v))
        if isinstance(v, type) or (callable(v) and hasattr(v, "__qualname__")):
            return _global_name(v)
        if isinstance(v, Mapping):
            return _blob(b"m", _qualname(t).encode()) + self._mapping(b"d", v.items())
        return self._reduce(v)

    def _reduce(self, v: Any) -> bytes:
        """Any other object: pickle's reduction protocol, with each part encoded canonically."""
        t = type(v)
        try:
            rv = v.__reduce_ex__(4)
        except Exception as exc:
            raise _Unkeyable(f"an object of type {_qualname(t)} cannot be pickled ({exc})") from exc
        if isinstance(rv, str):
            return _blob(b"G", f"{t.__module__}.{rv}".encode())
        if not isinstance(rv, tuple) or len(rv) < 2:
            raise _Unkeyable(f"{_qualname(t)}.__reduce_ex__ returned {type(rv).__name__}")
        func, args = rv[0], rv[1]
        state = rv[2] if len(rv) > 2 else None
        listitems = list(rv[3]) if len(rv) > 3 and rv[3] is not None else None
        dictitems = list(rv[4]) if len(rv) > 4 and rv[4] is not None else None
        out = [_blob(b"R", _qualname(t).encode()), _global_name(func), self.encode(args)]
        out.append(self.encode(state))
        out.append(b"N" if listitems is None else self._seq(b"l", listitems))
        out.append(b"N" if dictitems is None else self._mapping(b"d", dictitems))
        return b"".join(out)


def _global_name(obj: Any) -> bytes:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    # A local class is one definition however often its function runs; local
    # functions and lambdas differ by closure and code while sharing a name.
    if (
        not isinstance(name, str)
        or "<lambda>" in name
        or ("<locals>" in name and not isinstance(obj, type))
    ):
        raise _Unkeyable(
            f"{obj!r} has no stable name (a lambda or a local function); pass a value "
            "that describes it instead"
        )
    return _blob(b"G", f"{module}.{name}".encode())


# --------------------------------------------------------------------- buffers


def _buffer_digest(arr: Any) -> bytes:
    """XXH3-128 over a numpy array's memory (C order, little-endian), without copying."""
    import numpy as np

    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    flat = arr.reshape(-1).view(np.uint8)
    return xxhash.xxh3_128(flat).digest()


def _dtype_name(dtype: Any) -> str:
    s = str(dtype.str)
    if dtype.fields is not None or dtype.subdtype is not None:
        s += repr(dtype.descr)
    return s.replace(">", "<") if s.startswith(">") else s


def _numpy(v: Any, enc: _Encoder) -> bytes:
    import numpy as np

    if isinstance(v, np.ndarray):
        head = _blob(b"a", _dtype_name(v.dtype).encode()) + enc.encode(tuple(v.shape))
        if v.dtype.hasobject:
            return head + enc.encode(v.tolist())
        return head + _blob(b"h", _buffer_digest(v))
    if isinstance(v, np.generic):
        head = _blob(b"g", _dtype_name(v.dtype).encode())
        if v.dtype.hasobject:
            return head + enc.encode(v.item())
        return head + _blob(b"h", _buffer_digest(np.asarray(v)))
    if isinstance(v, np.dtype):
        return _blob(b"q", _dtype_name(v).encode())
    return enc._reduce(v)


def _column(values: Any, dtype: Any, enc: _Encoder) -> bytes:
    """One pandas column (or index level): its buffer when numpy-backed, else its values."""
    import numpy as np

    head = _blob(b"k", str(dtype).encode())
    if isinstance(dtype, np.dtype) and not dtype.hasobject:
        return head + _blob(b"h", _buffer_digest(np.asarray(values)))
    cat = getattr(values, "categories", None)
    codes = getattr(values, "codes", None)
    if cat is not None and codes is not None:
        return head + _index(cat, enc) + _blob(b"h", _buffer_digest(np.asarray(codes)))
    return head + enc.encode(list(values.tolist() if hasattr(values, "tolist") else values))


def _index(idx: Any, enc: _Encoder) -> bytes:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    names = enc.encode(tuple(idx.names))
    if isinstance(idx, pd.RangeIndex):
        return b"I" + names + enc.encode((idx.start, idx.stop, idx.step))
    if isinstance(idx, pd.MultiIndex):
        levels = b"".join(
            _column(idx.get_level_values(i).array, idx.levels[i].dtype, enc)
            for i in range(idx.nlevels)
        )
        return b"J" + names + _Q.pack(idx.nlevels) + levels
    return (
        b"K" + _blob(b"n", type(idx).__name__.encode()) + names + _column(idx.array, idx.dtype, enc)
    )


def _pandas(v: Any, enc: _Encoder) -> bytes:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    if isinstance(v, pd.DataFrame):
        cols = [_column(v.iloc[:, i].array, v.dtypes.iloc[i], enc) for i in range(v.shape[1])]
        return (
            b"P"
            + _index(v.columns, enc)
            + _index(v.index, enc)
            + _Q.pack(len(cols))
            + b"".join(cols)
        )
    if isinstance(v, pd.Series):
        return b"Q" + enc.encode(v.name) + _index(v.index, enc) + _column(v.array, v.dtype, enc)
    if isinstance(v, pd.Index):
        return _index(v, enc)
    if isinstance(v, pd.Timestamp):
        return _blob(b"W", v.isoformat().encode()) + _blob(b"w", str(v.tz).encode())
    if isinstance(v, pd.Timedelta):
        return _blob(b"D", f"Timedelta:{v.value}".encode())
    if v is pd.NaT:
        return b"O"
    return enc._reduce(v)


def _polars(v: Any, enc: _Encoder) -> bytes:
    import polars as pl

    def series(s: Any) -> bytes:
        head = _blob(b"n", s.name.encode()) + _blob(b"k", str(s.dtype).encode())
        if s.dtype.is_numeric() and s.null_count() == 0:
            return head + _blob(b"h", _buffer_digest(s.to_numpy()))
        return head + enc.encode(s.to_list())

    if isinstance(v, pl.DataFrame):
        return b"L" + _Q.pack(v.width) + b"".join(series(s) for s in v.get_columns())
    if isinstance(v, pl.Series):
        return b"V" + series(v)
    return enc._reduce(v)


# ----------------------------------------------------------------------- files

_file_memo: dict[tuple[Any, ...], bytes] = {}
_file_memo_lock = threading.Lock()
_FILE_MEMO_MAX = 100_000


def _file_digest(path: str, st: os.stat_result) -> bytes:
    """Digest of a file's bytes; unchanged files (same size, times, inode) are not re-read."""
    stamp = (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    with _file_memo_lock:
        hit = _file_memo.get(stamp)
    if hit is not None:
        return hit
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        buf = bytearray(min(_FILE_CHUNK, max(st.st_size, 1)))
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    digest = h.digest()
    with _file_memo_lock:
        if len(_file_memo) >= _FILE_MEMO_MAX:
            _file_memo.clear()
        _file_memo[stamp] = digest
    return digest


def _path(p: pathlib.PurePath) -> bytes:
    path = os.path.abspath(p)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _Unkeyable(
            f"path {str(p)!r} cannot be read ({exc.strerror}); Path parameters are keyed by "
            "content, pass str(path) to key by name instead"
        ) from None
    if not os.path.isdir(path):
        return _blob(b"p", _file_digest(path, st))
    files: list[tuple[str, str, os.stat_result]] = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            try:
                files.append((rel, full, os.stat(full)))
            except OSError as exc:
                raise _Unkeyable(f"file {full!r} cannot be read ({exc.strerror})") from None
    files.sort()

    def one(item: tuple[str, str, os.stat_result]) -> bytes:
        return _enc_str(item[0]) + _blob(b"p", _file_digest(item[1], item[2]))

    if len(files) > 1:
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
            parts = list(pool.map(one, files))
    else:
        parts = [one(f) for f in files]
    return b"e" + _Q.pack(len(parts)) + b"".join(parts)


# ----------------------------------------------------------------------- public


def encode_value(value: Any, name: str = "value") -> bytes:
    """The canonical bytes of one key parameter; raises CacheKeyError naming ``name``."""
    try:
        return _Encoder().encode(value)
    except _Unkeyable as exc:
        raise CacheKeyError(
            f"key parameter {name!r} cannot be part of a cache key: {exc}. Pass a value "
            "that is JSON-like, an array/frame, a Path, a dataclass or picklable, or "
            "compute the key yourself and pass cache_key=...",
        ) from exc.__cause__
    except RecursionError:
        raise CacheKeyError(
            f"key parameter {name!r} is nested too deeply to be part of a cache key"
        ) from None


def value_digest(value: Any, name: str = "value") -> str:
    """Hex XXH3-128 of the canonical encoding of ``value``."""
    return xxhash.xxh3_128_hexdigest(encode_value(value, name))


# Parameter names repeat (the same functions are called again and again): each
# name's encoding, and the hashed prefix of a key with that name alone.
_name_cache: dict[str, bytes] = {}
_alone_cache: dict[str, bytes] = {}
_ONE_PARAM = _KEY_HEADER + _Q.pack(1)


def _name_head(name: Any) -> bytes:
    if type(name) is not str:
        raise CacheKeyError(f"key parameter names are str, not {type(name).__name__}")
    head = _enc_str(name)
    if len(_name_cache) < 10_000:
        _name_cache[name] = head
        _alone_cache[name] = _ONE_PARAM + head
    return head


def make_key(params: Mapping[str, Any]) -> str:
    """The cache key (32 hex characters) of a mapping of key parameters."""
    if len(params) == 1:
        # The usual call (get(item=...), a one-argument function): nothing to sort.
        for name, value in params.items():
            prefix = _alone_cache.get(name) or _ONE_PARAM + _name_head(name)
            simple = _SIMPLE.get(type(value))
            return xxhash.xxh3_128_hexdigest(
                prefix + (simple(value) if simple else encode_value(value, name))
            )
    parts = []
    names = _name_cache
    for name, value in params.items():
        head = names.get(name)
        if head is None:
            head = _name_head(name)
        simple = _SIMPLE.get(type(value))
        parts.append(head + (simple(value) if simple else encode_value(value, name)))
    parts.sort()
    return xxhash.xxh3_128_hexdigest(_KEY_HEADER + _Q.pack(len(parts)) + b"".join(parts))


def _render(v: Any, name: str, depth: int = 0) -> Any:
    t = type(v)
    if t is str or t is bool or t is int or v is None:
        return v
    if t is float:
        return v if math.isfinite(v) else repr(v)
    if depth < 20:
        if t is list or t is tuple:
            return [_render(x, name, depth + 1) for x in v]
        if t is dict and all(type(k) is str for k in v):
            return {k: _render(x, name, depth + 1) for k, x in v.items()}
    if isinstance(v, enum.Enum):
        return f"{t.__qualname__}.{v.name}"
    if isinstance(v, pathlib.PurePath):
        return {"__type__": "path", "path": str(v), "hash": value_digest(v, name)}
    out: dict[str, Any] = {"__type__": f"{t.__module__}.{t.__qualname__}"}
    shape = getattr(v, "shape", None)
    if isinstance(shape, tuple):
        out["shape"] = [int(s) for s in shape]
    dtype = getattr(v, "dtype", None)
    if dtype is not None and not callable(dtype):
        out["dtype"] = str(dtype)
    out["hash"] = value_digest(v, name)
    return out


def render_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-able picture of key parameters: scalars and containers as they are,
    arrays, frames, paths and other objects as ``{"__type__", "hash", ...}``."""
    return {name: _render(value, name) for name, value in params.items()}
