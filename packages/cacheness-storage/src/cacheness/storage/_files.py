"""Raw bytes in and out of a BlobStore as files: ``put_file`` streams a file in,
``open`` streams stored bytes back and checks their hash at the end."""

from __future__ import annotations

import io
import logging
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from cacheness.storage._hashing import HashingReader, hash_chunks, new_hasher, split_hash
from cacheness.storage._loading import _STREAM_CHUNK, _check_hash, _check_signature, _check_size
from cacheness.storage._validation import _check_key, _check_metadata
from cacheness.storage._writing import _aborting, _blob_intact, _commit
from cacheness.storage.abc import BlobWriter, EntryRecord
from cacheness.storage.errors import (
    BlobNotFoundError,
    CacheIntegrityError,
    CacheKeyError,
    CacheSerializationError,
    CacheStorageError,
)

if TYPE_CHECKING:
    from cacheness.storage._store import BlobStore

logger = logging.getLogger(__name__)


def put_file(
    store: BlobStore,
    source: str | os.PathLike[str] | BinaryIO,
    key: str | None,
    metadata: Mapping[str, Any] | None,
) -> str:
    """:meth:`BlobStore.put_file`."""
    store._check_open()
    if key is not None:
        _check_key(key)
    user_meta = _check_metadata(metadata, key)
    if isinstance(source, str | os.PathLike):
        try:
            f = open(source, "rb")
        except OSError as exc:
            raise CacheStorageError(
                f"cannot read {os.fspath(source)!r} for {key!r}: {exc.strerror}",
                key=key,
            ) from exc
        with f:
            return _put_stream(store, f, key, user_meta)
    if not hasattr(source, "read"):
        raise CacheSerializationError(
            f"put_file takes a path or a binary file, not {type(source).__name__}", key=key
        )
    return _put_stream(store, source, key, user_meta)


def _put_stream(store: BlobStore, src: BinaryIO, key: str | None, user_meta: dict[str, Any]) -> str:
    start = _start_of(src)
    writer = store.blob_backend.writer()
    with _aborting(writer, key):
        digest, size = _stream(store, src, writer, key)
        blob_key = digest if store.content_addressable else uuid.uuid4().hex
        if store.content_addressable and _blob_intact(store, blob_key, size):
            writer.abort()
        else:
            writer.commit(blob_key)
    if key is None:
        key = digest if store.content_addressable else uuid.uuid4().hex
    record = EntryRecord(
        key=key,
        blob_key=blob_key,
        data_type="bytes",
        handler="bytes",
        codec="none",
        size=size,
        content_hash=f"{store.hash_algorithm}:{digest}",
        created_at=datetime.now(UTC),
        info={"kind": "bytes", "source": "file"},
        metadata=user_meta,
    )

    def rewrite() -> None:
        # Only reached, under the store's write lock, when a concurrent delete or gc()
        # freed the blob just streamed (before its entry committed): the source is
        # read again from where it started, if it can be.
        if start is None:
            raise CacheStorageError(
                f"the content of {key!r} was removed by a concurrent delete or gc() while "
                "it was being stored, and the source cannot be read again (not seekable); "
                "put the file again",
                key=key,
            )
        try:
            src.seek(start)
        except OSError as exc:
            raise CacheStorageError(
                f"cannot read the source file of {key!r} again: {exc}", key=key
            ) from exc
        again = store.blob_backend.writer()
        with _aborting(again, key):
            if _stream(store, src, again, key) != (digest, size):
                raise CacheStorageError(
                    f"the source file of {key!r} changed while it was being stored; "
                    "nothing was stored",
                    key=key,
                )
            again.commit(blob_key)

    _commit(store, record, rewrite)
    return key


def _start_of(src: BinaryIO) -> int | None:
    """Where a seekable ``src`` is now (to read it again from there), else None."""
    try:
        return src.tell() if src.seekable() else None
    except (OSError, AttributeError, ValueError):
        return None


def _stream(
    store: BlobStore, src: BinaryIO, writer: BlobWriter, key: str | None
) -> tuple[str, int]:
    """Copy ``src`` to ``writer``; the content's hex digest and size."""
    hasher = new_hasher(store.hash_algorithm)
    size = 0
    while True:
        try:
            chunk = src.read(_STREAM_CHUNK)
        except OSError as exc:
            raise CacheStorageError(
                f"reading the source file for {key!r} failed: {exc}", key=key
            ) from exc
        if not chunk:
            break
        if isinstance(chunk, str):
            raise CacheSerializationError(
                "put_file needs a binary file (opened with 'rb'), got text", key=key
            )
        hasher.update(chunk)
        writer.write(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


def open_entry(store: BlobStore, key: str) -> BinaryIO:
    """:meth:`BlobStore.open`."""
    store._check_open()
    _check_key(key)
    record = store.metadata_backend.get(key)
    if record is None:
        raise CacheKeyError(f"no entry {key!r}", key=key)
    if record.handler != "bytes":
        raise CacheSerializationError(
            f"entry {key!r} holds a {record.data_type} stored by handler {record.handler!r}; "
            "open() streams entries stored with put_file() or as bytes. Use get() to load it",
            key=key,
        )
    while True:
        _check_signature(store, record, True)
        if record.inline is not None:
            data = record.inline
            if store.verify_on_read:
                _check_hash(record, hash_chunks((data,), split_hash(record.content_hash)[0]))
            else:
                _check_size(record, len(data))
            return io.BytesIO(store._codec_named(record.codec).decode(data))
        try:
            raw = store.blob_backend.open_read(record.blob_key)
            break
        except BlobNotFoundError as exc:
            # Replaced or deleted by a concurrent writer, or really lost?
            fresh = store.metadata_backend.get(key)
            if fresh is None:
                raise CacheKeyError(f"no entry {key!r}", key=key) from None
            if fresh.blob_key == record.blob_key:
                logger.error("the stored content of %r is missing", key)
                raise CacheIntegrityError(
                    f"the content of {key!r} is missing; run verify(repair=True) to drop "
                    "such entries",
                    key=key,
                ) from exc
            record = fresh
    if record.codec != "none":
        with raw:
            data = raw.read()
        if store.verify_on_read:
            _check_hash(record, hash_chunks([data], split_hash(record.content_hash)[0]))
        return io.BytesIO(store._pm.codec(record.codec).decode(data))
    return _VerifyingReader(raw, record, store.verify_on_read)  # type: ignore[return-value]


class _VerifyingReader(io.RawIOBase):
    """Streams a raw blob and checks its hash when the end is reached."""

    def __init__(self, raw: BinaryIO, record: EntryRecord, verify: bool) -> None:
        super().__init__()
        self._reader = HashingReader(raw, split_hash(record.content_hash)[0])
        self._record = record
        self._verify = verify
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._reader.readinto(buffer)
        if n == 0 and not self._done:
            self._done = True
            if self._reader.bytes_read != self._record.size:
                raise CacheIntegrityError(
                    f"the content of {self._record.key!r} is {self._reader.bytes_read} bytes, "
                    f"not the {self._record.size} recorded; the bytes read are corrupt",
                    key=self._record.key,
                )
            if self._verify and self._reader.content_hash() != self._record.content_hash:
                raise CacheIntegrityError(
                    f"the content of {self._record.key!r} does not match its hash; "
                    "the bytes read from this file are corrupt",
                    key=self._record.key,
                )
        return n

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()
