"""Conversions between :class:`EntryRecord` and flat rows, shared by the SQL and JSON backends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cacheness.storage.abc import EntryRecord

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

COLUMNS = (
    "key",
    "blob_key",
    "data_type",
    "handler",
    "codec",
    "size",
    "content_hash",
    "created_us",
    "info",
    "metadata",
    "signature",
    "inline_value",
)


_US = timedelta(microseconds=1)  # built once: a new timedelta per put cost ~0.7 µs


def to_micros(dt: datetime) -> int:
    return (dt - EPOCH) // _US


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


# One encoder, not json.dumps(..., options): that builds a new encoder per call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False).encode


def dumps_json(value: Any) -> str:
    if not value:
        return "{}" if isinstance(value, dict) else json.dumps(value)
    return _ENCODE(value)


# Parsed form of short, flat JSON objects seen before ('{"kind":"bytes"}' and the
# like repeat on every row): a dict copy is several times cheaper than decoding.
_FLAT_CACHE: dict[str, dict[str, Any]] = {}
_FLAT_CACHE_MAX = 4096
_FLAT_TEXT_MAX = 120


def loads_json(text: str) -> Any:
    if text == "{}":  # most entries carry no user metadata
        return {}
    hit = _FLAT_CACHE.get(text)
    if hit is not None:
        return dict(hit)
    value = json.loads(text)
    if (
        len(text) <= _FLAT_TEXT_MAX
        and isinstance(value, dict)
        and len(_FLAT_CACHE) < _FLAT_CACHE_MAX
        and not any(isinstance(v, dict | list) for v in value.values())
    ):
        _FLAT_CACHE[text] = value
        return dict(value)
    return value


def record_to_row(r: EntryRecord) -> tuple[Any, ...]:
    return (
        r.key,
        r.blob_key,
        r.data_type,
        r.handler,
        r.codec,
        r.size,
        r.content_hash,
        to_micros(r.created_at),
        dumps_json(r.info),
        dumps_json(r.metadata),
        r.signature,
        r.inline,
    )


def row_to_record(row: Any) -> EntryRecord:
    # Positional, in field order: measurably cheaper than keywords on the hot path.
    return EntryRecord(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        EPOCH + timedelta(microseconds=row[7]),
        loads_json(row[8]),
        loads_json(row[9]),
        row[10],
        # Rows written before inline values existed have no such column.
        row[11] if len(row) > 11 else None,
    )


#: What loading a value reads (each column fetched costs ~0.2 µs on the small get).
LOAD_COLUMNS = ("blob_key", "handler", "codec", "size", "content_hash", "info", "inline_value")


def load_record(key: str, row: Any) -> EntryRecord:
    """A record from the columns of ``LOAD_COLUMNS`` (in that order), for loading only:
    ``data_type``, ``created_at``, ``metadata`` and ``signature`` are placeholders."""
    return EntryRecord(
        key, row[0], "", row[1], row[2], row[3], row[4], EPOCH, loads_json(row[5]), {}, None, row[6]
    )


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (code-point order)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot appear in stored keys
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None
