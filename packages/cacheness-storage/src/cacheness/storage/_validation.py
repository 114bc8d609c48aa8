"""Checks on what callers hand a BlobStore: keys and user metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cacheness.storage.errors import CacheKeyError, CacheSerializationError


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise CacheKeyError(f"keys are str, not {type(key).__name__}: {key!r}")
    if not key:
        raise CacheKeyError("a key must not be empty")
    if "\x00" in key:
        raise CacheKeyError(f"key {key!r} contains a NUL character", key=key)
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates cannot be stored as text by SQLite, PostgreSQL or JSON.
            raise CacheKeyError(
                f"key {key!r} is not valid Unicode (it holds a lone surrogate)", key=key
            ) from None
    return key


def _check_metadata(metadata: Mapping[str, Any] | None, key: str | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise CacheSerializationError(
            f"metadata must be a dict, not {type(metadata).__name__}", key=key
        )
    try:
        # Round-trip so what we store is exactly what comes back (tuples become lists).
        out: dict[str, Any] = json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CacheSerializationError(
            f"metadata for key {key!r} is not JSON-able ({exc}); use str, int, float, bool, "
            "None, lists and dicts with str keys",
            key=key,
        ) from None
    for name in metadata:
        if not isinstance(name, str):
            raise CacheSerializationError(
                f"metadata field names must be str, got {name!r}", key=key
            )
    return out
