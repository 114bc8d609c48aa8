"""BlobStore: the public face of the storage layer."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from cacheness.storage._hashing import HashingReader, hash_chunks, new_hasher, split_hash
from cacheness.storage._plugins import PluginManager, get_plugin_manager
from cacheness.storage.abc import (
    BlobBackend,
    BlobWriter,
    Buffer,
    BufferReader,
    Codec,
    EntryRecord,
    MetadataBackend,
    TypeHandler,
)
from cacheness.storage.backends._rows import EPOCH, loads_json
from cacheness.storage.errors import (
    BlobNotFoundError,
    CacheConfigError,
    CacheError,
    CacheIntegrityError,
    CacheKeyError,
    CacheSerializationError,
    CacheStorageError,
)
from cacheness.storage.handlers._pickle import PickleHandler
from cacheness.storage.security._signing import Signer, check_signed_fields, load_signing_key

__all__ = ["BlobStore", "VerifyReport"]

logger = logging.getLogger(__name__)

_SMALL_BLOB = 4 * 1024 * 1024
#: Values at most this large once encoded live in the metadata row (when the
#: backend supports it): a get is then one indexed lookup and no file open.
INLINE_MAX = 16 * 1024
_STREAM_CHUNK = 8 * 1024 * 1024
#: Blobs at least this large are hashed while they are written (see ``_write_hashing``).
_FUSE_MIN = 16 * 1024 * 1024
# Temp files younger than this may belong to a put still in progress.
_TEMP_GRACE_S = 3600.0

_MISSING = object()
# A read that loses the race against a writer freeing its blob re-reads the entry.
_RACE_RETRIES = 5


@dataclass
class VerifyReport:
    """What :meth:`BlobStore.verify` found (and, with ``repair=True``, removed)."""

    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    bad_signature: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.orphaned or self.bad_signature)


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


def _with_key(exc: CacheStorageError, key: str | None) -> CacheStorageError:
    """The backend names the blob; the user needs the key they were storing."""
    what = "the file" if key is None else repr(key)
    return type(exc)(f"could not store {what}: {exc.message}", key=key, backend=exc.backend)


def _for_key(write_blob: Any, key: str) -> None:
    try:
        write_blob()
    except CacheStorageError as exc:
        raise _with_key(exc, key) from exc


class BlobStore:
    """A content-addressable store of Python objects.

    ``BlobStore("./artifacts")`` keeps metadata in SQLite and blobs as files
    under that folder. ``backend`` picks the metadata backend (``"sqlite"``,
    ``"json"``, ``"memory"``, a SQLAlchemy URL or an instance);
    ``blob_backend`` the blob backend (``"file"``, ``"memory"``, a URL such
    as ``"s3://bucket/prefix"``, or an instance). Values of at most
    ``inline_max`` bytes once encoded (default 16 KiB; 0: none) are kept in
    the metadata row rather than the blob backend, so reading them is one
    indexed lookup; larger values are content-addressed blobs.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        backend: str | MetadataBackend = "sqlite",
        blob_backend: str | BlobBackend = "file",
        compression: str = "lz4",
        compression_level: int | None = None,
        content_addressable: bool = True,
        hash_algorithm: str = "xxh3_128",
        signing_key: bytes | str | os.PathLike[str] | None = None,
        require_signatures: bool = False,
        custom_signed_fields: list[str] | tuple[str, ...] | None = None,
        verify_on_read: bool = True,
        allow_dill: bool | None = None,
        blob_backend_options: Mapping[str, Any] | None = None,
        metadata_backend_options: Mapping[str, Any] | None = None,
        plugin_manager: PluginManager | None = None,
        inline_max: int | None = None,
    ) -> None:
        self._pm = plugin_manager or get_plugin_manager()
        self.root = None if path is None else Path(path).absolute()
        new_hasher(hash_algorithm)  # validates the name
        self.hash_algorithm = hash_algorithm
        self.content_addressable = content_addressable
        self.verify_on_read = verify_on_read
        self.require_signatures = require_signatures
        self.allow_dill = (not require_signatures) if allow_dill is None else allow_dill
        fields = check_signed_fields(custom_signed_fields)
        key = load_signing_key(signing_key)
        if require_signatures and key is None:
            raise CacheConfigError(
                "require_signatures=True needs a signing_key (bytes, a key-file path, "
                "or CACHENESS_SIGNING_KEY)"
            )
        self._signer = None if key is None else Signer(key, fields)
        self._codec = self._make_codec(compression, compression_level)
        self.metadata_backend = self._resolve(
            "metadata_backends", backend, MetadataBackend, metadata_backend_options
        )
        try:
            self.blob_backend = self._resolve(
                "blob_backends", blob_backend, BlobBackend, blob_backend_options
            )
        except BaseException:
            self.metadata_backend.close()
            raise
        # Small values go into the metadata row when the backend can keep them.
        limit = INLINE_MAX if inline_max is None else inline_max
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            self.close()
            raise CacheConfigError(f"inline_max must be an int >= 0, not {inline_max!r}")
        self.inline_max = limit if self.metadata_backend.supports_inline else 0
        import xxhash

        self._xxh3 = xxhash.xxh3_128_hexdigest
        self._handlers: dict[str, TypeHandler] = {}
        self._codecs: dict[str, Codec] = {}
        self._closed = False
        self._pickle_is_plain: bool | None = None

    # ------------------------------------------------------------ construction

    def _handler_named(self, name: str) -> TypeHandler:
        # Per-store cache: the plugin manager's lookup builds a key string per call.
        handler = self._handlers.get(name)
        if handler is None:
            handler = self._handlers[name] = self._pm.handler(name)
        return handler

    def _codec_named(self, name: str) -> Codec:
        codec = self._codecs.get(name)
        if codec is None:
            codec = self._codecs[name] = self._pm.codec(name)
        return codec

    def _make_codec(self, name: str, level: int | None) -> Any:
        cls = self._pm.lookup("codecs", name)
        if level is None:
            return self._pm.codec(name)
        try:
            return cls(level=level)
        except TypeError:
            raise CacheConfigError(f"codec {name!r} takes no compression_level") from None

    def _resolve(self, kind: str, spec: Any, base: type, options: Mapping[str, Any] | None) -> Any:
        if isinstance(spec, base):
            return spec
        if not isinstance(spec, str):
            raise CacheConfigError(
                f"{kind[:-1].replace('_', ' ')} must be a name, a URL or a "
                f"{base.__name__} instance, not {type(spec).__name__}"
            )
        opts = dict(options or {})
        if "://" in spec:
            scheme = spec.split("://", 1)[0]
            try:
                cls = self._pm.lookup(kind, scheme)
            except CacheConfigError:
                if "+" not in scheme:
                    raise
                cls = self._pm.lookup(kind, scheme.split("+", 1)[0])
            return cls.from_url(spec, **opts)
        cls = self._pm.lookup(kind, spec)
        return self._from_directory(cls, kind, opts)

    def _from_directory(self, cls: Any, kind: str, opts: dict[str, Any]) -> Any:
        needs_dir = {"sqlite": "metadata.sqlite", "json": "metadata.json"}
        from cacheness.storage.backends import FilesystemBlobBackend

        if kind == "metadata_backends" and cls.name in needs_dir:
            if self.root is None:
                raise CacheConfigError(
                    f"metadata backend {cls.name!r} keeps a file: give BlobStore a path, "
                    "or use backend='memory'"
                )
            return cls(self.root / needs_dir[cls.name], **opts)
        if issubclass(cls, FilesystemBlobBackend):
            if self.root is None:
                raise CacheConfigError(
                    "the 'file' blob backend needs a folder: give BlobStore a path, "
                    "or use blob_backend='memory'"
                )
            return cls(self.root, **opts)
        return cls(**opts)

    # ------------------------------------------------------------------ writes

    def _handler_for(self, data: Any, key: str | None) -> TypeHandler:
        try:
            handler = self._pm.handler_for(data)
        except CacheSerializationError as exc:
            exc.key = key
            raise
        if handler.name == "dill" and not self.allow_dill:
            raise CacheSerializationError(
                f"a value of type {type(data).__qualname__} needs dill, which this store does "
                "not allow (allow_dill=False or require_signatures=True)",
                key=key,
            )
        return handler

    def _serialize(self, data: Any, key: str | None) -> tuple[TypeHandler, Any]:
        handler = self._handler_for(data, key)
        try:
            return handler, handler.dump(data, self._codec)
        except CacheError:
            raise
        except Exception as exc:
            # A handler choosing a type does not guarantee it can encode this value
            # (an object array, a lock, a lambda ...): fall through to pickle, then dill.
            for fallback in ("pickle", "dill"):
                if fallback == handler.name or fallback not in self._pm.handlers():
                    continue
                if fallback == "dill" and not self.allow_dill:
                    continue
                try:
                    fb = self._pm.handler(fallback)
                    ser = fb.dump(data, self._codec)
                except Exception as fb_exc:  # noqa: BLE001 - the original error is reported
                    logger.debug("handler %r failed too: %s", fallback, fb_exc)
                    continue
                logger.debug(
                    "handler %r declined (%s); stored with %r", handler.name, exc, fallback
                )
                return fb, ser
            t = type(data)
            raise CacheSerializationError(
                f"cannot serialise a value of type {t.__module__}.{t.__qualname__} for key "
                f"{key!r} with handler {handler.name!r}: {exc}",
                key=key,
            ) from exc

    def put(
        self, data: Any, key: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> str:
        """Store ``data``; return its key (the content hash when none is given and the
        store is content-addressable, else a generated id)."""
        return self.put_record(data, key, metadata).key

    def put_record(
        self,
        data: Any,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        within: Callable[[EntryRecord], None] | None = None,
        keep_inline: Callable[[EntryRecord], None] | None = None,
    ) -> EntryRecord:
        """:meth:`put`, returning the committed :class:`EntryRecord`.

        ``within(record)`` runs inside the metadata backend's write transaction
        right after the entry is written, so a caller keeping its own rows in
        the same database commits them atomically with the entry (an exception
        from it rolls the entry back).

        ``keep_inline(record)`` takes a value small enough to live inline
        (``record.inline`` set) *instead of* the metadata backend: nothing is
        written to this store, and the caller keeps the record in rows of its
        own (the cache index does) and loads it later with :meth:`get_record`.
        Larger values are stored as usual, with ``within``.
        """
        self._check_open()
        if key is not None:
            _check_key(key)
        user_meta = _check_metadata(metadata, key)
        handler, ser = self._serialize(data, key)
        chunks = ser.chunks
        one = chunks[0] if len(chunks) == 1 else None
        # One bytes chunk (every small pickle): measured and hashed without the
        # general machinery, a few µs of a small put.
        nbytes = len(one) if type(one) is bytes else ser.nbytes
        pending: BlobWriter | None = None
        if nbytes > self.inline_max and self._hash_while_writing(key, nbytes):
            pending, content_hash = self._write_hashing(chunks, key)
            digest = split_hash(content_hash)[1]
        elif type(one) is bytes and self.hash_algorithm == "xxh3_128":
            digest = self._xxh3(one)
            content_hash = "xxh3_128:" + digest
        else:
            content_hash = hash_chunks(chunks, self.hash_algorithm)
            digest = split_hash(content_hash)[1]
        try:
            if key is None:
                key = digest if self.content_addressable else uuid.uuid4().hex
            inline: bytes | None = None
            if nbytes <= self.inline_max:
                inline = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
                blob_key = ""
            else:
                blob_key = digest if self.content_addressable else uuid.uuid4().hex
            # Positional (key, blob_key, data_type, handler, codec, size, content_hash,
            # created_at, info, metadata, signature, inline): cheaper than keywords.
            record = EntryRecord(
                key, blob_key, ser.data_type or handler.name, handler.name, ser.codec, nbytes,
                content_hash, datetime.now(UTC), dict(ser.info) if ser.info else {}, user_meta,
                None, inline,
            )  # fmt: skip
            if inline is not None and keep_inline is not None:
                if self._signer is not None:
                    record.signature = self._signer.sign(record)
                keep_inline(record)
            else:

                def write_blob() -> None:
                    nonlocal pending
                    if pending is not None:
                        writer, pending = pending, None
                        writer.commit(blob_key)
                    else:  # no temp file, or a concurrent gc freed what it became: write again
                        self.blob_backend.put(blob_key, chunks)

                self._commit(record, write_blob, within)
        finally:
            if pending is not None:  # deduplicated (or failed): drop the temp file
                pending.abort()
        logger.debug("put %r (%s, %d bytes)", key, handler.name, nbytes)
        return record

    def _hash_while_writing(self, key: str | None, nbytes: int) -> bool:
        """Write a large blob to a temp file while hashing it, before knowing whether
        the content is already stored? Then a duplicate costs a wasted write
        (the temp file is dropped and the stored blob shared), so only when one is
        unlikely: the store does not deduplicate, or the key is new or held a
        value of another size. A local file only: other backends' writers copy or upload.
        """
        if nbytes < _FUSE_MIN:
            return False
        from cacheness.storage.backends._filesystem import FilesystemBlobBackend

        if not isinstance(self.blob_backend, FilesystemBlobBackend):
            return False
        if not self.content_addressable:
            return True
        if key is None:  # keyed by content: storing known content again is the common case
            return False
        old = self.metadata_backend.get(key)
        return old is None or old.size != nbytes

    def _write_hashing(self, chunks: Sequence[Buffer], key: str | None) -> tuple[BlobWriter, str]:
        """Write ``chunks`` to a new temp blob while another thread hashes them; ``(writer, hash)``.

        Both xxhash and hashlib release the GIL on large buffers, so on two cores
        the hash (~15% of a page-cache write) costs next to nothing.
        """
        hasher = new_hasher(self.hash_algorithm)
        failed: list[BaseException] = []

        def digest() -> None:
            try:
                for chunk in chunks:
                    hasher.update(chunk)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the putting thread below
                failed.append(exc)

        writer = self.blob_backend.writer()
        thread = threading.Thread(target=digest, name="cacheness-hash", daemon=True)
        thread.start()
        try:
            try:
                for chunk in chunks:
                    writer.write(chunk)
            finally:
                thread.join()
            if failed:
                raise failed[0]
        except CacheStorageError as exc:
            writer.abort()
            raise _with_key(exc, key) from exc
        except BaseException:
            writer.abort()
            raise
        return writer, f"{self.hash_algorithm}:{hasher.hexdigest()}"

    def _blob_intact(self, blob_key: str, size: int) -> bool:
        """True when a blob of the expected size is stored (a cheap check before reusing it)."""
        try:
            return self.blob_backend.size(blob_key) == size
        except BlobNotFoundError:
            return False

    def _commit(
        self,
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
        if self._signer is not None:
            record.signature = self._signer.sign(record)
        blobs, meta = self.blob_backend, self.metadata_backend
        if record.inline is not None:
            # The value is in the row: one transaction, nothing to write or free first.
            with meta.write_lock():
                old = meta.put(record)
                if within is not None:
                    within(record)
            if old is not None and old.blob_key:
                self._release(old.blob_key)
            return
        wrote = False
        # Reusing stored content needs it to be whole: a blob truncated behind
        # our back is rewritten rather than shared.
        if not (self.content_addressable and self._blob_intact(record.blob_key, record.size)):
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
                self._release_quietly(record.blob_key, record.key)
            raise
        if old is not None and old.blob_key and old.blob_key != record.blob_key:
            self._release(old.blob_key)

    def _release(self, blob_key: str) -> None:
        """Delete a blob when no entry points at it (in its own critical section)."""
        if not blob_key:
            return  # an inline entry: its value went with its row
        with self.metadata_backend.write_lock():
            if self.metadata_backend.count_refs(blob_key) == 0:
                self.blob_backend.delete(blob_key)

    def _release_quietly(self, blob_key: str, key: str) -> None:
        """After a failed put: free the blob it wrote, if nothing else uses it."""
        try:
            self._release(blob_key)
        except CacheError as exc:
            # The put's own error is the one to report; the orphan is harmless
            # and gc() frees it.
            logger.warning(
                "could not remove the content written for %r after its put failed (%s); "
                "gc() will free it",
                key,
                exc,
            )

    def put_file(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store a file's bytes, streaming: memory use does not grow with the file."""
        self._check_open()
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
                return self._put_stream(f, key, user_meta)
        if not hasattr(source, "read"):
            raise CacheSerializationError(
                f"put_file takes a path or a binary file, not {type(source).__name__}", key=key
            )
        return self._put_stream(source, key, user_meta)

    def _put_stream(self, src: BinaryIO, key: str | None, user_meta: dict[str, Any]) -> str:
        hasher = new_hasher(self.hash_algorithm)
        size = 0
        writer = self.blob_backend.writer()
        try:
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
            digest = hasher.hexdigest()
            blob_key = digest if self.content_addressable else uuid.uuid4().hex
            if self.content_addressable and self._blob_intact(blob_key, size):
                writer.abort()
            else:
                writer.commit(blob_key)
        except CacheStorageError as exc:
            writer.abort()
            raise _with_key(exc, key) from exc
        except BaseException:
            writer.abort()
            raise
        if key is None:
            key = digest if self.content_addressable else uuid.uuid4().hex
        record = EntryRecord(
            key=key,
            blob_key=blob_key,
            data_type="bytes",
            handler="bytes",
            codec="none",
            size=size,
            content_hash=f"{self.hash_algorithm}:{digest}",
            created_at=datetime.now(UTC),
            info={"kind": "bytes", "source": "file"},
            metadata=user_meta,
        )

        def rewrite() -> None:
            # Only reached when a concurrent delete freed the blob we just
            # streamed; the source may not be re-readable, so say so.
            raise CacheStorageError(
                f"the content of {key!r} was removed by a concurrent delete or gc() while it "
                "was being stored; put the file again",
                key=key,
            )

        self._commit(record, rewrite)
        return key

    def update_metadata(self, key: str, metadata: Mapping[str, Any]) -> bool:
        """Merge ``metadata`` into the user metadata of ``key``; False when absent."""
        self._check_open()
        _check_key(key)
        update = _check_metadata(metadata, key)
        meta = self.metadata_backend
        with meta.write_lock():
            record = meta.get(key)
            if record is None:
                return False
            if self._signer is not None and not self._signer.verify(record):
                raise CacheIntegrityError(
                    f"entry {key!r} has a bad signature; refusing to re-sign it", key=key
                )
            record.metadata = {**record.metadata, **update}
            if self._signer is not None:
                record.signature = self._signer.sign(record)
            meta.put(record)
        return True

    def delete(self, key: str) -> bool:
        """Remove ``key``; its content is freed when no other key shares it."""
        self._check_open()
        _check_key(key)
        old = self.metadata_backend.delete(key)
        if old is None:
            return False
        # The entry is committed as gone before its content may go (see _commit).
        self._release(old.blob_key)
        logger.debug("deleted %r", key)
        return True

    # ------------------------------------------------------------------- reads

    def exists(self, key: str) -> bool:
        self._check_open()
        _check_key(key)
        return self.metadata_backend.get(key) is not None

    def list(
        self, prefix: str | None = None, metadata_filter: Mapping[str, Any] | None = None
    ) -> list[str]:
        """Keys (sorted) starting with ``prefix`` whose user metadata equals ``metadata_filter``."""
        self._check_open()
        return self.metadata_backend.list_keys(prefix, metadata_filter)

    def describe(self, record: EntryRecord) -> dict[str, Any]:
        """What :meth:`get_metadata` returns, for a record already in hand (one from
        :meth:`put_record`, kept by its caller)."""
        self._check_open()
        return self._describe(record)

    def _describe(self, record: EntryRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": record.key,
            "data_type": record.data_type,
            "handler": record.handler,
            "codec": record.codec,
            "size": record.size,
            "content_hash": record.content_hash,
            "created_at": record.created_at,
            "signature_valid": None if self._signer is None else self._signer.verify(record),
            "metadata": record.metadata,
        }
        if record.signature is not None:
            out["signature"] = record.signature
        return out

    def get_metadata(self, key: str) -> dict[str, Any] | None:
        """System fields and user metadata (under ``"metadata"``), without loading the value."""
        self._check_open()
        _check_key(key)
        record = self.metadata_backend.get(key)
        return None if record is None else self._describe(record)

    def get(self, key: str, default: Any = None, *, strict_verification: bool = True) -> Any:
        """The value stored under ``key``, or ``default`` when absent.

        Raises :class:`CacheIntegrityError` when the content is corrupt or
        missing, or the signature is bad (unless ``strict_verification=False``
        and signatures are not required: then the value comes back with a WARNING).
        """
        if self._closed:
            self._check_open()
        _check_key(key)
        meta = self.metadata_backend
        # A signature covers every field: only unsigned stores can read fewer columns.
        record = meta.get(key) if self._signer is not None else meta.get_for_load(key)
        if record is None:
            return default
        loaded = self._load_current(record, strict_verification)
        return default if loaded is None else loaded[0]

    def get_with_metadata(
        self, key: str, *, strict_verification: bool = True
    ) -> tuple[Any, dict[str, Any]] | None:
        """``(value, metadata)`` for ``key``, or None when absent."""
        self._check_open()
        _check_key(key)
        record = self.metadata_backend.get(key)
        if record is None:
            return None
        loaded = self._load_current(record, strict_verification)
        if loaded is None:
            return None
        value, signature_valid, record = loaded
        meta = self._describe(record)
        meta["signature_valid"] = signature_valid
        return value, meta

    def get_record(
        self, record: EntryRecord, default: Any = None, *, strict_verification: bool = True
    ) -> Any:
        """The value of ``record`` (from :meth:`put_record` or the metadata backend),
        with every check :meth:`get` makes, without reading the metadata again;
        ``default`` when the entry was deleted and its blob freed meanwhile."""
        if self._closed:
            self._check_open()
        if record.inline is not None:  # no blob to go missing: nothing to retry
            return self._load(record, strict_verification)[0]
        loaded = self._load_current(record, strict_verification)
        return default if loaded is None else loaded[0]

    def get_inline(
        self,
        key: str,
        handler: str,
        codec: str,
        size: int,
        content_hash: str,
        info: Mapping[str, Any] | str,
        data: bytes,
        strict_verification: bool = True,
    ) -> Any:
        """The value of an inline record a caller holds (see ``put_record(keep_inline=)``)
        from its fields, with every check :meth:`get_record` makes; ``info`` is the
        record's info or its JSON text as a metadata row holds it.

        The same as ``get_record(EntryRecord(...))`` without building the record: a
        plain pickle on an unsigned store is checked and loaded in place, which is
        most of the cost of a small get.
        """
        if self._closed:
            self._check_open()
        plain = self._pickle_is_plain
        if plain is None:
            plain = self._plain_pickle()
        if (
            plain
            and handler == "pickle"
            and codec == "none"
            and (info == "{}" or not info)
            and size == len(data)
            and (not self.verify_on_read or content_hash == "xxh3_128:" + self._xxh3(data))
        ):
            try:
                return pickle.loads(data)
            except Exception:  # noqa: BLE001 - the general path below reports it
                pass
        fields = loads_json(info) if isinstance(info, str) else dict(info or {})
        record = EntryRecord(
            key, "", "", handler, codec, size, content_hash, EPOCH, fields, {}, None, data
        )
        return self._load(record, strict_verification)[0]

    def _plain_pickle(self) -> bool:
        """Can an inline value be loaded with ``pickle.loads`` after its hash check: an
        unsigned store whose handler named "pickle" is the built-in one (no plugin
        replaced it)?"""
        plain = self._pickle_is_plain
        if plain is None:
            plain = self._pickle_is_plain = (
                self._signer is None and type(self._handler_named("pickle")) is PickleHandler
            )
        return plain

    def _load_current(
        self, record: EntryRecord, strict: bool
    ) -> tuple[Any, bool | None, EntryRecord] | None:
        """Load ``record``; if its blob is gone because a concurrent put or delete
        replaced the entry, load what the entry is now (None when deleted)."""
        for _attempt in range(_RACE_RETRIES):
            try:
                value, signature_valid = self._load(record, strict)
                return value, signature_valid, record
            except CacheIntegrityError as exc:
                if not isinstance(exc.__cause__, BlobNotFoundError):
                    raise
                fresh = self.metadata_backend.get(record.key)
                if fresh is None:
                    return None  # deleted while we read it: a miss, as if we had come later
                if fresh.blob_key == record.blob_key:
                    logger.error("the stored content of %r is missing", record.key)
                    raise
                record = fresh
        raise CacheStorageError(
            f"entry {record.key!r} kept changing while it was read; try again", key=record.key
        )

    def _check_signature(self, record: EntryRecord, strict: bool) -> bool | None:
        if self._signer is None:
            return None
        if self._signer.verify(record):
            return True
        what = "is unsigned" if not record.signature else "has a bad signature"
        if self.require_signatures or strict:
            raise CacheIntegrityError(
                f"entry {record.key!r} {what}; it was not loaded. If the store was written "
                "with another signing key, re-open it with that key",
                key=record.key,
            )
        logger.warning(
            "entry %r %s; returning it because strict_verification=False", record.key, what
        )
        return False

    def _load(self, record: EntryRecord, strict: bool) -> tuple[Any, bool | None]:
        signature_valid = self._check_signature(record, strict) if self._signer else None
        handler = self._handler_named(record.handler)
        codec = self._codec_named(record.codec)
        if handler.name == "dill" and not self.allow_dill:
            raise CacheIntegrityError(
                f"entry {record.key!r} was stored with dill, which this store does not load "
                "(allow_dill=False or require_signatures=True)",
                key=record.key,
            )
        # A signature vouches for the recorded hash, not for the blob: bytes that
        # a code-running handler sees are always checked when signing is on.
        verify = self.verify_on_read or (not handler.safe and self._signer is not None)
        try:
            inline = record.inline
            if inline is not None:
                expected = record.content_hash
                if not verify:
                    self._check_size(record, len(inline))
                elif expected[:9] == "xxh3_128:":
                    # hash_chunks without its hasher object: a third of a small get.
                    if expected[9:] != self._xxh3(inline):
                        self._check_hash(record, "xxh3_128:" + self._xxh3(inline))
                else:
                    self._check_hash(record, hash_chunks((inline,), split_hash(expected)[0]))
                return handler.load_bytes(inline, record.info, codec), signature_valid
            algorithm = split_hash(record.content_hash)[0]
            if record.size <= _SMALL_BLOB or not handler.safe:
                # Whole blob first: code-running handlers must never see bytes
                # whose hash has not been checked.
                data = self._read_whole(record)
                if verify:
                    self._check_hash(record, hash_chunks([data], algorithm))
                else:
                    self._check_size(record, memoryview(data).nbytes)
                return handler.load(BufferReader(data), record.info, codec), signature_valid  # type: ignore[arg-type]
            raw = self.blob_backend.open_read(record.blob_key)
            reader = HashingReader(raw, algorithm)
            try:
                value = handler.load(reader, record.info, codec)  # type: ignore[arg-type]
                reader.drain()
            finally:
                reader.close()
            if verify:
                self._check_hash(record, reader.content_hash())
            else:
                self._check_size(record, reader.bytes_read)
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

    def _read_whole(self, record: EntryRecord) -> Buffer:
        """The blob in memory; a large one read into fresh writable memory, so that
        handlers can hand out views of it (pickle's out-of-band buffers) without a copy."""
        if record.size <= _SMALL_BLOB:
            return self.blob_backend.get(record.blob_key)
        import numpy as np  # its allocator uses huge pages: ~3x faster to fill than bytearray

        buf = np.empty(record.size, dtype=np.uint8).data
        with self.blob_backend.open_read(record.blob_key) as raw:
            n = 0
            while n < record.size:
                got = raw.readinto(buf[n : n + _STREAM_CHUNK])
                if not got:
                    break
                n += got
            extra = raw.read(1)
        # A short or long blob fails the hash check (or the handler) below.
        return buf if n == record.size and not extra else buf[:n].tobytes() + extra

    def _check_size(self, record: EntryRecord, actual: int) -> None:
        # Even unverified reads refuse a blob of the wrong length (truncated, replaced).
        if actual != record.size:
            logger.error("the stored content of %r has the wrong size", record.key)
            raise CacheIntegrityError(
                f"the content of {record.key!r} is {actual} bytes, not the {record.size} "
                "recorded; it is corrupt and was not returned",
                key=record.key,
            )

    def _check_hash(self, record: EntryRecord, actual: str) -> None:
        if actual != record.content_hash:
            logger.error("the stored content of %r is corrupt (hash mismatch)", record.key)
            raise CacheIntegrityError(
                f"the content of {record.key!r} does not match its hash (stored "
                f"{record.content_hash}, read {actual}); it is corrupt and was not returned",
                key=record.key,
            )

    def open(self, key: str) -> BinaryIO:
        """A binary file over the stored bytes of ``key`` (what ``put_file`` took in).

        Raw entries stream from the backend; the hash is checked when the
        reader reaches the end, raising :class:`CacheIntegrityError` on a mismatch.
        """
        self._check_open()
        _check_key(key)
        record = self.metadata_backend.get(key)
        if record is None:
            raise CacheKeyError(f"no entry {key!r}", key=key)
        if record.handler != "bytes":
            raise CacheSerializationError(
                f"entry {key!r} holds a {record.data_type} stored by handler {record.handler!r}; "
                "open() streams entries stored with put_file() or as bytes. Use get() to load it",
                key=key,
            )
        while True:
            self._check_signature(record, True)
            if record.inline is not None:
                data = record.inline
                if self.verify_on_read:
                    self._check_hash(
                        record, hash_chunks((data,), split_hash(record.content_hash)[0])
                    )
                else:
                    self._check_size(record, len(data))
                return io.BytesIO(self._codec_named(record.codec).decode(data))
            try:
                raw = self.blob_backend.open_read(record.blob_key)
                break
            except BlobNotFoundError as exc:
                # Replaced or deleted by a concurrent writer, or really lost?
                fresh = self.metadata_backend.get(key)
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
            if self.verify_on_read:
                self._check_hash(record, hash_chunks([data], split_hash(record.content_hash)[0]))
            return io.BytesIO(self._pm.codec(record.codec).decode(data))
        return _VerifyingReader(raw, record, self.verify_on_read)  # type: ignore[return-value]

    # ------------------------------------------------------------ maintenance

    def verify(self, key: str | None = None, repair: bool = False) -> VerifyReport:
        """Audit content hashes, presence, orphans and signatures; ``repair`` drops what fails."""
        self._check_open()
        report = VerifyReport()
        if key is not None:
            _check_key(key)
            record = self.metadata_backend.get(key)
            records = [] if record is None else [record]
        else:
            records = list(self.metadata_backend.iter_records())
        for record in records:
            report.checked += 1
            problem: list[str] | None = None
            if self._signer is not None and not self._signer.verify(record):
                problem = report.bad_signature
            elif record.inline is not None:
                algorithm = split_hash(record.content_hash)[0]
                if hash_chunks((record.inline,), algorithm) != record.content_hash:
                    problem = report.corrupt
            else:
                try:
                    with self.blob_backend.open_read(record.blob_key) as raw:
                        reader = HashingReader(raw, split_hash(record.content_hash)[0])
                        reader.drain()
                    if reader.content_hash() != record.content_hash:
                        problem = report.corrupt
                except BlobNotFoundError:
                    problem = report.missing
            if problem is not None:
                problem.append(record.key)
                if repair:
                    self._drop_entry(record)
                    report.repaired.append(record.key)
        if key is None:
            referenced = self.metadata_backend.blob_keys()
            for blob_key in self.blob_backend.iter_keys():
                if blob_key not in referenced:
                    report.orphaned.append(blob_key)
                    if repair and self._free_orphan(blob_key) is not None:
                        report.repaired.append(blob_key)
        if not report.ok:
            # Corrupt or missing content is data lost; the rest is reparable clutter.
            logger.log(
                logging.ERROR if report.corrupt or report.missing else logging.WARNING,
                "verify found %d corrupt, %d missing, %d orphaned, %d badly signed",
                len(report.corrupt),
                len(report.missing),
                len(report.orphaned),
                len(report.bad_signature),
            )
        return report

    def _drop_entry(self, record: EntryRecord) -> None:
        with self.metadata_backend.write_lock():
            current = self.metadata_backend.get(record.key)
            if current is None or current.blob_key != record.blob_key:
                return  # replaced since it was checked: the new entry is not ours to drop
            self.metadata_backend.delete(record.key)
        logger.warning("verify(repair=True) removed entry %r", record.key)
        self._release(record.blob_key)

    def _free_orphan(self, blob_key: str) -> int | None:
        with self.metadata_backend.write_lock():
            if self.metadata_backend.count_refs(blob_key):
                return None
            try:
                size = self.blob_backend.size(blob_key)
            except BlobNotFoundError:
                return None
            self.blob_backend.delete(blob_key)
            return size

    def gc(self) -> int:
        """Free content no key references (and stale temp files); return the bytes freed."""
        self._check_open()
        freed = 0
        referenced = self.metadata_backend.blob_keys()
        for blob_key in list(self.blob_backend.iter_keys()):
            if blob_key not in referenced:
                freed += self._free_orphan(blob_key) or 0
        temp_files = getattr(self.blob_backend, "temp_files", None)
        if temp_files is not None:
            cutoff = time.time() - _TEMP_GRACE_S
            for path in temp_files():
                try:
                    st = path.stat()
                    if st.st_mtime < cutoff:
                        path.unlink()
                        freed += st.st_size
                except FileNotFoundError:
                    pass
        if freed:
            logger.info("gc freed %d bytes", freed)
        return freed

    # -------------------------------------------------------------- lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError("this BlobStore is closed; open a new one")

    def close(self) -> None:
        """Release every connection and handle. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            self.metadata_backend.close()
        finally:
            self.blob_backend.close()

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"BlobStore({str(self.root)!r}, backend={self.metadata_backend.name!r}, "
            f"blob_backend={self.blob_backend.name!r})"
        )


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
