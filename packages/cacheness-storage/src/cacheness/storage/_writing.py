"""Writing an entry: choosing a handler and serialising the value, writing its
blob (hashed while written when large), committing the entry and freeing the
content it replaced.

``_serialize``, ``_hash_while_writing``, ``_write_hashing``, ``_commit`` and
``_release`` are :class:`BlobStore` methods, bound in its class body rather than
wrapped, so a put pays no extra call for their living here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cacheness.storage._hashing import new_hasher
from cacheness.storage.abc import BlobWriter, Buffer, EntryRecord, TypeHandler
from cacheness.storage.errors import (
    BlobNotFoundError,
    CacheError,
    CacheSerializationError,
    CacheStorageError,
)

if TYPE_CHECKING:
    from cacheness.storage._store import BlobStore

logger = logging.getLogger(__name__)

#: Blobs at least this large are hashed while they are written (see ``_write_hashing``).
_FUSE_MIN = 16 * 1024 * 1024


def _with_key(exc: CacheStorageError, key: str | None) -> CacheStorageError:
    """The backend names the blob; the user needs the key they were storing."""
    what = "the file" if key is None else repr(key)
    return type(exc)(f"could not store {what}: {exc.message}", key=key, backend=exc.backend)


def _for_key(write_blob: Any, key: str) -> None:
    try:
        write_blob()
    except CacheStorageError as exc:
        raise _with_key(exc, key) from exc


def _handler_for(store: BlobStore, data: Any, key: str | None) -> TypeHandler:
    try:
        handler = store._pm.handler_for(data)
    except CacheSerializationError as exc:
        exc.key = key
        raise
    if handler.name == "dill" and not store.allow_dill:
        raise CacheSerializationError(
            f"a value of type {type(data).__qualname__} needs dill, which this store does "
            "not allow (allow_dill=False or require_signatures=True)",
            key=key,
        )
    return handler


def _serialize(store: BlobStore, data: Any, key: str | None) -> tuple[TypeHandler, Any]:
    handler = _handler_for(store, data, key)
    try:
        return handler, handler.dump(data, store._codec)
    except CacheError:
        raise
    except Exception as exc:
        # A handler choosing a type does not guarantee it can encode this value
        # (an object array, a lock, a lambda ...): fall through to pickle, then dill.
        for fallback in ("pickle", "dill"):
            if fallback == handler.name or fallback not in store._pm.handlers():
                continue
            if fallback == "dill" and not store.allow_dill:
                continue
            try:
                fb = store._pm.handler(fallback)
                ser = fb.dump(data, store._codec)
            except Exception as fb_exc:  # noqa: BLE001 - the original error is reported
                logger.debug("handler %r failed too: %s", fallback, fb_exc)
                continue
            logger.debug("handler %r declined (%s); stored with %r", handler.name, exc, fallback)
            return fb, ser
        t = type(data)
        raise CacheSerializationError(
            f"cannot serialise a value of type {t.__module__}.{t.__qualname__} for key "
            f"{key!r} with handler {handler.name!r}: {exc}",
            key=key,
        ) from exc


def _hash_while_writing(store: BlobStore, key: str | None, nbytes: int) -> bool:
    """Write a large blob to a temp file while hashing it, before knowing whether
    the content is already stored? Then a duplicate costs a wasted write
    (the temp file is dropped and the stored blob shared), so only when one is
    unlikely: the store does not deduplicate, or the key is new or held a
    value of another size. A local file only: other backends' writers copy or upload.
    """
    if nbytes < _FUSE_MIN:
        return False
    from cacheness.storage.backends._filesystem import FilesystemBlobBackend

    if not isinstance(store.blob_backend, FilesystemBlobBackend):
        return False
    if not store.content_addressable:
        return True
    if key is None:  # keyed by content: storing known content again is the common case
        return False
    old = store.metadata_backend.get(key)
    return old is None or old.size != nbytes


@contextmanager
def _aborting(writer: BlobWriter, key: str | None) -> Iterator[None]:
    """Drop ``writer``'s temp blob if the block fails; a storage error names ``key``."""
    try:
        yield
    except CacheStorageError as exc:
        writer.abort()
        raise _with_key(exc, key) from exc
    except BaseException:
        writer.abort()
        raise


def _write_hashing(
    store: BlobStore, chunks: Sequence[Buffer], key: str | None
) -> tuple[BlobWriter, str]:
    """Write ``chunks`` to a new temp blob while another thread hashes them; ``(writer, hash)``.

    Both xxhash and hashlib release the GIL on large buffers, so on two cores
    the hash (~15% of a page-cache write) costs next to nothing.
    """
    hasher = new_hasher(store.hash_algorithm)
    failed: list[BaseException] = []

    def digest() -> None:
        try:
            for chunk in chunks:
                hasher.update(chunk)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the putting thread below
            failed.append(exc)

    writer = store.blob_backend.writer()
    thread = threading.Thread(target=digest, name="cacheness-hash", daemon=True)
    thread.start()
    with _aborting(writer, key):
        try:
            for chunk in chunks:
                writer.write(chunk)
        finally:
            thread.join()
        if failed:
            raise failed[0]
    return writer, f"{store.hash_algorithm}:{hasher.hexdigest()}"


#: Stored content up to this size is hashed before a put reuses it (larger content is
#: only checked for its size: reading it would cost about what writing it again does).
_VERIFY_REUSE_MAX = 32 * 1024 * 1024


def _blob_intact(store: BlobStore, blob_key: str, size: int) -> bool:
    """True when the stored blob ``blob_key`` (a content-addressed store's: its name is
    its hash) can be shared: of the expected size and, up to ``_VERIFY_REUSE_MAX``,
    hashing to its name. A blob damaged in place is then written again by the next
    put of its content, which mends every key sharing it, instead of being handed to
    one more key."""
    blobs = store.blob_backend
    try:
        if blobs.size(blob_key) != size:
            return False
        if size > _VERIFY_REUSE_MAX or not blobs.local:
            return True
        hasher = new_hasher(store.hash_algorithm)
        with blobs.open_read(blob_key) as f:
            while chunk := f.read(1024 * 1024):
                hasher.update(chunk)
    except (BlobNotFoundError, OSError):
        return False
    return bool(hasher.hexdigest() == blob_key)


def _commit(
    store: BlobStore,
    record: EntryRecord,
    write_blob: Any,
    within: Callable[[EntryRecord], None] | None = None,
) -> None:
    """Write the blob (unless deduplicated), commit the entry, then free what it replaced.

    The blob a replaced entry pointed at is deleted only after the new
    entry is committed, in a second critical section: were it unlinked
    inside the metadata transaction, a crash before COMMIT would roll the
    old entry back while its blob is already gone.
    """
    if store._signer is not None:
        record.signature = store._signer.sign(record)
    blobs, meta = store.blob_backend, store.metadata_backend
    if record.inline is not None:
        # The value is in the row: one transaction, nothing to write or free first.
        with meta.write_lock():
            old = meta.put(record)
            if within is not None:
                within(record)
        if old is not None and old.blob_key:
            _release(store, old.blob_key)
        return
    wrote = False
    # Reusing stored content needs it to be whole: a blob truncated behind
    # our back is rewritten rather than shared.
    if not (store.content_addressable and _blob_intact(store, record.blob_key, record.size)):
        _for_key(write_blob, record.key)
        wrote = True
    try:
        with meta.write_lock():
            # A concurrent delete (or gc) may have freed the blob between our
            # write and this lock; under the lock nobody else can free it.
            if not blobs.exists(record.blob_key):
                _for_key(write_blob, record.key)
                wrote = True
            old = meta.put(record)
            if within is not None:
                within(record)
    except BaseException:
        if wrote:
            _release_quietly(store, record.blob_key, record.key)
        raise
    if old is not None and old.blob_key and old.blob_key != record.blob_key:
        _release(store, old.blob_key)


def _release(store: BlobStore, blob_key: str) -> None:
    """Delete a blob when no entry points at it (in its own critical section)."""
    if not blob_key:
        return  # an inline entry: its value went with its row
    with store.metadata_backend.write_lock():
        if store.metadata_backend.count_refs(blob_key) == 0:
            store.blob_backend.delete(blob_key)


def _release_quietly(store: BlobStore, blob_key: str, key: str) -> None:
    """After a failed put: free the blob it wrote, if nothing else uses it."""
    try:
        _release(store, blob_key)
    except CacheError as exc:
        # The put's own error is the one to report; the orphan is harmless
        # and gc() frees it.
        logger.warning(
            "could not remove the content written for %r after its put failed (%s); "
            "gc() will free it",
            key,
            exc,
        )
