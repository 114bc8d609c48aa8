"""BlobStore: the public face of the storage layer."""

from __future__ import annotations

import logging
import os
import pickle
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from cacheness.storage import _files, _loading, _maintenance, _writing
from cacheness.storage._hashing import hash_chunks, new_hasher, split_hash
from cacheness.storage._maintenance import VerifyReport
from cacheness.storage._options import _make_codec, _make_signer, _open_backends
from cacheness.storage._plugins import PluginManager, get_plugin_manager
from cacheness.storage._validation import _check_key, _check_metadata
from cacheness.storage.abc import (
    BlobBackend,
    BlobWriter,
    Codec,
    EntryRecord,
    MetadataBackend,
    TypeHandler,
)
from cacheness.storage.backends._rows import EPOCH, loads_json
from cacheness.storage.errors import (
    CacheConfigError,
    CacheError,
    CacheIntegrityError,
    CacheKeyError,
)
from cacheness.storage.handlers._pickle import PickleHandler

__all__ = ["BlobStore"]

logger = logging.getLogger(__name__)

#: Values at most this large once encoded live in the metadata row (when the
#: backend supports it): a get is then one indexed lookup and no file open.
INLINE_MAX = 16 * 1024


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
        self._signer = _make_signer(signing_key, custom_signed_fields, require_signatures)
        self._codec = _make_codec(self._pm, compression, compression_level)
        self.metadata_backend, self.blob_backend = _open_backends(
            self._pm,
            self.root,
            backend,
            blob_backend,
            metadata_backend_options,
            blob_backend_options,
        )
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

    # ------------------------------------------------------------------ writes

    # Bound, not wrapped: a put calls these as directly as methods written here.
    _serialize = _writing._serialize
    _hash_while_writing = _writing._hash_while_writing
    _write_hashing = _writing._write_hashing
    _commit = _writing._commit
    _release = _writing._release

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

    def put_file(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store a file's bytes, streaming: memory use does not grow with the file."""
        return _files.put_file(self, source, key, metadata)

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

    # Bound, not wrapped: a get calls these as directly as methods written here.
    _load_current = _loading._load_current
    _load = _loading._load

    def exists(self, key: str) -> bool:
        self._check_open()
        _check_key(key)
        return self.metadata_backend.get(key) is not None

    def list(
        self, prefix: str | None = None, metadata_filter: Mapping[str, Any] | None = None
    ) -> list[str]:
        """Keys (sorted) starting with ``prefix`` whose user metadata equals ``metadata_filter``."""
        self._check_open()
        if prefix is not None and not isinstance(prefix, str):
            raise CacheKeyError(f"prefix must be a str or None, not {type(prefix).__name__}")
        if metadata_filter is not None and not isinstance(metadata_filter, Mapping):
            raise CacheConfigError(
                f"metadata_filter must be a dict or None, not {type(metadata_filter).__name__}"
            )
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

    def get_plain_pickle(
        self, key: str, content_hash: str, data: bytes, strict_verification: bool = True
    ) -> Any:
        """:meth:`get_inline` of a value its caller knows to be a plain pickle: handler
        "pickle", codec "none", no info, ``data`` of the recorded size (a cache index
        row checks this in its query). On an unsigned store it is only hash-checked
        and loaded, the whole of a small cached get besides the lookup."""
        if self._closed:
            self._check_open()
        plain = self._pickle_is_plain
        if plain is None:
            plain = self._plain_pickle()
        if plain and (
            not self.verify_on_read
            or (content_hash.startswith("xxh3_128:") and content_hash.endswith(self._xxh3(data)))
        ):
            try:
                return pickle.loads(data)
            except Exception:  # noqa: BLE001 - the general path below reports it
                pass
        return self.get_inline(
            key, "pickle", "none", len(data), content_hash, "{}", data, strict_verification
        )

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

    def open(self, key: str) -> BinaryIO:
        """A binary file over the stored bytes of ``key`` (what ``put_file`` took in).

        Raw entries stream from the backend; the hash is checked when the
        reader reaches the end, raising :class:`CacheIntegrityError` on a mismatch.
        """
        return _files.open_entry(self, key)

    # ------------------------------------------------------------ maintenance

    def verify(self, key: str | None = None, repair: bool = False) -> VerifyReport:
        """Audit content hashes, presence, orphans and signatures; ``repair`` drops what fails."""
        return _maintenance.verify(self, key, repair)

    def gc(self) -> int:
        """Free content no key references (and stale temp files); return the bytes freed."""
        return _maintenance.gc(self)

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
