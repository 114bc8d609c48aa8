"""The wire format of key encoding: one-letter type tags, length-prefixed bytes."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

_MAX_DEPTH = 100
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
