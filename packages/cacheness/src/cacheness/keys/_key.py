"""Cache keys from key parameters, and their JSON-able picture for metadata."""

from __future__ import annotations

import enum
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import xxhash

from cacheness.keys._encoder import encode_value, value_digest
from cacheness.keys._wire import _Q, _SIMPLE, _enc_str
from cacheness.storage.errors import CacheKeyError

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

# Parameter names repeat (the same functions are called again and again): each
# name's encoding, and the hashed prefix of a key with that name alone.
_name_cache: dict[str, bytes] = {}
_alone_cache: dict[str, bytes] = {}
_alone_str_cache: dict[str, bytes] = {}  # the same followed by the str tag
_ONE_PARAM = _KEY_HEADER + _Q.pack(1)
_SHORT_LENGTHS = [_Q.pack(n) for n in range(256)]  # a list index is faster than a pack
_hexdigest = xxhash.xxh3_128_hexdigest


# Keys of one-str calls (get(item="...")) already computed: a repeated key
# costs two dict lookups instead of an encode, two concatenations and a hash
# (a third of a memory-tier hit). Bounded: emptied when full.
_str_memo: dict[str, dict[str, str]] = {}
_memo_size = 0
_MEMO_ENTRIES = 8192
_MEMO_LONGEST = 256  # longer strings are rarely repeated keys and cost memory


def _remember(name: str, value: str, key: str) -> None:
    global _memo_size
    if _memo_size >= _MEMO_ENTRIES:
        _str_memo.clear()
        _memo_size = 0
    memo = _str_memo.get(name)
    if memo is None:
        memo = _str_memo[name] = {}
    memo[value] = key
    _memo_size += 1


def _name_head(name: Any) -> bytes:
    if type(name) is not str:
        raise CacheKeyError(f"key parameter names are str, not {type(name).__name__}")
    head = _enc_str(name)
    if len(_name_cache) < 10_000:
        _name_cache[name] = head
        _alone_cache[name] = _ONE_PARAM + head
        _alone_str_cache[name] = _ONE_PARAM + head + b"s"
    return head


def make_key(params: Mapping[str, Any]) -> str:
    """The cache key (32 hex characters) of a mapping of key parameters."""
    global _memo_size
    if len(params) == 1:
        # The usual call (get(item=...), a one-argument function): nothing to sort.
        for name, value in params.items():
            if type(name) is not str:
                # Before any cache lookup: a str subclass equal to a cached name must
                # fail here as it does in a fresh process.
                _name_head(name)  # raises CacheKeyError
            if type(value) is str:  # get(item="...") and friends: _enc_str inlined
                memo = _str_memo.get(name)
                if memo is not None:
                    key = memo.get(value)
                    if key is not None:
                        return key
                prefix = _alone_str_cache.get(name) or _ONE_PARAM + _name_head(name) + b"s"
                try:
                    data = value.encode()  # the strict codec is faster; the bytes are the same
                except UnicodeEncodeError:
                    data = value.encode("utf-8", "surrogatepass")  # lone surrogates
                n = len(data)
                key = _hexdigest(prefix + (_SHORT_LENGTHS[n] if n < 256 else _Q.pack(n)) + data)
                if n <= _MEMO_LONGEST:
                    if memo is not None and _memo_size < _MEMO_ENTRIES:
                        # _remember inlined: with many distinct keys (a 1,000,000-entry
                        # cache) nearly every get comes here, and the call cost ~0.1 µs.
                        memo[value] = key
                        _memo_size += 1
                    else:
                        _remember(name, value, key)
                return key
            prefix = _alone_cache.get(name) or _ONE_PARAM + _name_head(name)
            simple = _SIMPLE.get(type(value))
            return _hexdigest(prefix + (simple(value) if simple else encode_value(value, name)))
    parts = []
    names = _name_cache
    for name, value in params.items():
        head = names.get(name)
        if head is None or type(name) is not str:
            head = _name_head(name)
        simple = _SIMPLE.get(type(value))
        parts.append(head + (simple(value) if simple else encode_value(value, name)))
    parts.sort()
    return _hexdigest(_KEY_HEADER + _Q.pack(len(parts)) + b"".join(parts))


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
