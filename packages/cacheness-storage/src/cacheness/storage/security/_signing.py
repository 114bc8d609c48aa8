"""HMAC-SHA256 signatures over an entry's fields.

One function, :func:`signable_bytes`, extracts the signed fields both when an
entry is signed (put) and when it is checked (get), so a valid entry can
never be rejected because the two sides looked at different fields.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cacheness.storage.abc import EntryRecord
from cacheness.storage.backends._rows import to_micros
from cacheness.storage.errors import CacheConfigError

__all__ = [
    "DEFAULT_SIGNED_FIELDS",
    "VALID_SIGNED_FIELDS",
    "Signer",
    "load_signing_key",
    "signable_bytes",
]

#: Every field a signature may cover.
VALID_SIGNED_FIELDS: frozenset[str] = frozenset(
    {
        "key",
        "blob_key",
        "data_type",
        "handler",
        "codec",
        "size",
        "content_hash",
        "created_at",
        "info",
        "metadata",
    }
)
#: What is signed unless ``custom_signed_fields`` says otherwise: all of them.
DEFAULT_SIGNED_FIELDS: tuple[str, ...] = tuple(sorted(VALID_SIGNED_FIELDS))
#: Covered whatever ``custom_signed_fields`` says: what decides how stored bytes are loaded.
ALWAYS_SIGNED: frozenset[str] = frozenset({"content_hash", "handler", "codec", "info"})
MIN_KEY_BYTES = 32

logger = logging.getLogger(__name__)
ENV_VAR = "CACHENESS_SIGNING_KEY"


def _field(record: EntryRecord, name: str) -> Any:
    if name == "created_at":
        return to_micros(record.created_at)
    return getattr(record, name)


def signable_bytes(record: EntryRecord, fields: Iterable[str]) -> bytes:
    doc = {name: _field(record, name) for name in fields}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def check_signed_fields(fields: Iterable[str] | None) -> tuple[str, ...]:
    if fields is None:
        return DEFAULT_SIGNED_FIELDS
    chosen = tuple(sorted(set(fields)))
    unknown = [f for f in chosen if f not in VALID_SIGNED_FIELDS]
    if unknown:
        raise CacheConfigError(
            f"custom_signed_fields has unknown field(s) {', '.join(map(repr, unknown))}; "
            f"valid fields: {', '.join(sorted(VALID_SIGNED_FIELDS))}"
        )
    # Without these a signature says nothing about which bytes get loaded
    # and by which handler (a swapped handler could unpickle signed raw bytes):
    # they are always covered.
    return tuple(sorted({*chosen, *ALWAYS_SIGNED}))


class Signer:
    """Signs and checks entries with one key and one field list."""

    def __init__(self, key: bytes, fields: Iterable[str] | None = None) -> None:
        # Keyed once; each signature copies this state (cheaper than keying per call).
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.fields = check_signed_fields(fields)

    def sign(self, record: EntryRecord) -> str:
        mac = self._mac.copy()
        mac.update(signable_bytes(record, self.fields))
        return mac.hexdigest()

    def verify(self, record: EntryRecord) -> bool:
        sig = record.signature
        if not sig or not isinstance(sig, str) or not sig.isascii():
            return False  # compare_digest refuses non-ASCII str; such a value is no signature
        return hmac.compare_digest(sig, self.sign(record))

    def __repr__(self) -> str:  # never show the key
        return f"Signer(fields={self.fields!r})"


def load_signing_key(value: bytes | str | os.PathLike[str] | None) -> bytes | None:
    """Resolve ``signing_key``: bytes, a key-file path (created 0600 when absent), or the env var."""
    if value is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            return None
        try:
            key = bytes.fromhex(env.strip())
        except ValueError:
            raise CacheConfigError(f"{ENV_VAR} must hold the key as hex digits") from None
    elif isinstance(value, bytes | bytearray):
        key = bytes(value)
    elif isinstance(value, str | os.PathLike):
        key = _key_file(Path(value))
    else:
        raise CacheConfigError(
            f"signing_key must be bytes or a key-file path, not {type(value).__name__}"
        )
    if len(key) < MIN_KEY_BYTES:
        raise CacheConfigError(
            f"signing_key must be at least {MIN_KEY_BYTES} bytes (got {len(key)}); "
            "use secrets.token_bytes(32) or pass a key-file path"
        )
    return key


def _key_file(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        pass
    else:
        if os.stat(path).st_mode & 0o077:
            # Still usable, but anyone who can read it can forge entries.
            logger.warning(
                "signing key file %s is readable by other users; run: chmod 600 %s", path, path
            )
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(MIN_KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()  # another process created it first
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key
