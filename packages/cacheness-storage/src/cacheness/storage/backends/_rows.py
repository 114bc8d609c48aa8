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
)


def to_micros(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def dumps_json(value: Any) -> str:
    if not value:
        return "{}" if isinstance(value, dict) else json.dumps(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)


def loads_json(text: str) -> Any:
    # Most entries carry no user metadata: skip the decoder for the common case.
    return {} if text == "{}" else json.loads(text)


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
    )


def row_to_record(row: Any) -> EntryRecord:
    return EntryRecord(
        key=row[0],
        blob_key=row[1],
        data_type=row[2],
        handler=row[3],
        codec=row[4],
        size=row[5],
        content_hash=row[6],
        created_at=from_micros(row[7]),
        info=loads_json(row[8]),
        metadata=loads_json(row[9]),
        signature=row[10],
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
