"""Loading an entry's value: its handler and codec, and the signature, size and
hash checks every read makes.

``_load`` and ``_load_current`` are :class:`BlobStore` methods, bound in its
class body rather than wrapped, so a get pays no extra call for their living here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cacheness.storage._hashing import HashingReader, hash_chunks, split_hash
from cacheness.storage.abc import Buffer, BufferReader, EntryRecord
from cacheness.storage.errors import (
    BlobNotFoundError,
    CacheError,
    CacheIntegrityError,
    CacheStorageError,
)

if TYPE_CHECKING:
    from cacheness.storage._store import BlobStore

logger = logging.getLogger(__name__)

_SMALL_BLOB = 4 * 1024 * 1024
_STREAM_CHUNK = 8 * 1024 * 1024
# A read that loses the race against a writer freeing its blob re-reads the entry.
_RACE_RETRIES = 5


def _load_current(
    store: BlobStore, record: EntryRecord, strict: bool
) -> tuple[Any, bool | None, EntryRecord] | None:
    """Load ``record``; if its blob is gone because a concurrent put or delete
    replaced the entry, load what the entry is now (None when deleted)."""
    for _attempt in range(_RACE_RETRIES):
        try:
            value, signature_valid = _load(store, record, strict)
            return value, signature_valid, record
        except CacheIntegrityError as exc:
            if not isinstance(exc.__cause__, BlobNotFoundError):
                raise
            fresh = store.metadata_backend.get(record.key)
            if fresh is None:
                return None  # deleted while we read it: a miss, as if we had come later
            if fresh.blob_key == record.blob_key:
                logger.error("the stored content of %r is missing", record.key)
                raise
            record = fresh
    raise CacheStorageError(
        f"entry {record.key!r} kept changing while it was read; try again", key=record.key
    )


def _check_signature(store: BlobStore, record: EntryRecord, strict: bool) -> bool | None:
    if store._signer is None:
        return None
    if store._signer.verify(record):
        return True
    what = "is unsigned" if not record.signature else "has a bad signature"
    if store.require_signatures or strict:
        raise CacheIntegrityError(
            f"entry {record.key!r} {what}; it was not loaded. If the store was written "
            "with another signing key, re-open it with that key",
            key=record.key,
        )
    logger.warning("entry %r %s; returning it because strict_verification=False", record.key, what)
    return False


def _load(store: BlobStore, record: EntryRecord, strict: bool) -> tuple[Any, bool | None]:
    signature_valid = _check_signature(store, record, strict) if store._signer else None
    handler = store._handler_named(record.handler)
    codec = store._codec_named(record.codec)
    if handler.name == "dill" and not store.allow_dill:
        raise CacheIntegrityError(
            f"entry {record.key!r} was stored with dill, which this store does not load "
            "(allow_dill=False or require_signatures=True)",
            key=record.key,
        )
    # A signature vouches for the recorded hash, not for the blob: bytes that
    # a code-running handler sees are always checked when signing is on.
    verify = store.verify_on_read or (not handler.safe and store._signer is not None)
    try:
        inline = record.inline
        if inline is not None:
            expected = record.content_hash
            if not verify:
                _check_size(record, len(inline))
            elif expected[:9] == "xxh3_128:":
                # hash_chunks without its hasher object: a third of a small get.
                if expected[9:] != store._xxh3(inline):
                    _check_hash(record, "xxh3_128:" + store._xxh3(inline))
            else:
                _check_hash(record, hash_chunks((inline,), split_hash(expected)[0]))
            return handler.load_bytes(inline, record.info, codec), signature_valid
        algorithm = split_hash(record.content_hash)[0]
        if record.size <= _SMALL_BLOB or not handler.safe:
            # Whole blob first: code-running handlers must never see bytes
            # whose hash has not been checked.
            data = _read_whole(store, record)
            if verify:
                _check_hash(record, hash_chunks([data], algorithm))
            else:
                _check_size(record, memoryview(data).nbytes)
            return handler.load(BufferReader(data), record.info, codec), signature_valid  # type: ignore[arg-type]
        raw = store.blob_backend.open_read(record.blob_key)
        reader = HashingReader(raw, algorithm)
        try:
            value = handler.load(reader, record.info, codec)  # type: ignore[arg-type]
            reader.drain()
        finally:
            reader.close()
        if verify:
            _check_hash(record, reader.content_hash())
        else:
            _check_size(record, reader.bytes_read)
        return value, signature_valid
    except BlobNotFoundError as exc:
        raise CacheIntegrityError(
            f"the content of {record.key!r} is missing from the blob backend; "
            "run verify(repair=True) to drop such entries",
            key=record.key,
        ) from exc
    except CacheError:
        raise
    except Exception as exc:
        raise CacheIntegrityError(
            f"entry {record.key!r} could not be decoded by handler {record.handler!r} "
            f"with codec {record.codec!r}: {exc}",
            key=record.key,
        ) from exc


def _read_whole(store: BlobStore, record: EntryRecord) -> Buffer:
    """The blob in memory; a large one read into fresh writable memory, so that
    handlers can hand out views of it (pickle's out-of-band buffers) without a copy."""
    if record.size <= _SMALL_BLOB:
        return store.blob_backend.get(record.blob_key)
    import numpy as np  # its allocator uses huge pages: ~3x faster to fill than bytearray

    buf = np.empty(record.size, dtype=np.uint8).data
    with store.blob_backend.open_read(record.blob_key) as raw:
        n = 0
        while n < record.size:
            got = raw.readinto(buf[n : n + _STREAM_CHUNK])
            if not got:
                break
            n += got
        extra = raw.read(1)
    # A short or long blob fails the hash check (or the handler) below.
    return buf if n == record.size and not extra else buf[:n].tobytes() + extra


def _check_size(record: EntryRecord, actual: int) -> None:
    # Even unverified reads refuse a blob of the wrong length (truncated, replaced).
    if actual != record.size:
        logger.error("the stored content of %r has the wrong size", record.key)
        raise CacheIntegrityError(
            f"the content of {record.key!r} is {actual} bytes, not the {record.size} "
            "recorded; it is corrupt and was not returned",
            key=record.key,
        )


def _check_hash(record: EntryRecord, actual: str) -> None:
    if actual != record.content_hash:
        logger.error("the stored content of %r is corrupt (hash mismatch)", record.key)
        raise CacheIntegrityError(
            f"the content of {record.key!r} does not match its hash (stored "
            f"{record.content_hash}, read {actual}); it is corrupt and was not returned",
            key=record.key,
        )
