"""The canonical encoder: any supported value to the bytes its key is hashed from."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

import xxhash

from cacheness.keys._arrays import _numpy, _pandas, _polars
from cacheness.keys._files import _path
from cacheness.keys._wire import _MAX_DEPTH, _Q, _SIMPLE, _blob, _enc_float, _qualname, _Unkeyable
from cacheness.storage.errors import CacheKeyError


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
