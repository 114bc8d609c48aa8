"""The four plugin roles of the storage layer, one abstract class each.

A third-party package implements one of these, returns the class from the
matching ``cacheness_register_*`` hook (see :mod:`cacheness.storage.hookspecs`),
and proves it with the conformance suites in :mod:`cacheness.storage.testing`.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, ClassVar

__all__ = [
    "BlobBackend",
    "BlobWriter",
    "BufferReader",
    "Codec",
    "EntryRecord",
    "MetadataBackend",
    "Serialized",
    "TypeHandler",
    "encode_if_smaller",
]

Buffer = bytes | bytearray | memoryview


# --------------------------------------------------------------------------- blobs


class BlobWriter(ABC):
    """A blob being written whose name is known only at the end (streaming puts).

    ``write`` chunks, then ``commit(key)`` publishes them atomically under
    ``key``, or ``abort()`` discards them. Used as a context manager, an
    uncommitted writer is aborted on exit.
    """

    @abstractmethod
    def write(self, data: Buffer) -> None: ...

    @abstractmethod
    def commit(self, key: str) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class _SpooledWriter(BlobWriter):
    """Default writer: spool to a temporary file, then hand it to ``put_file``."""

    def __init__(self, backend: BlobBackend) -> None:
        self._backend = backend
        self._tmp: tempfile.SpooledTemporaryFile[bytes] | None = tempfile.SpooledTemporaryFile(
            max_size=16 * 1024 * 1024
        )

    def write(self, data: Buffer) -> None:
        assert self._tmp is not None, "writer already finished"
        self._tmp.write(data)

    def commit(self, key: str) -> None:
        assert self._tmp is not None, "writer already finished"
        self._tmp.seek(0)
        self._backend.put_file(key, self._tmp)  # type: ignore[arg-type]
        self.abort()

    def abort(self) -> None:
        if self._tmp is not None:
            self._tmp.close()
            self._tmp = None


class BlobBackend(ABC):
    """Where blob bytes live, addressed by opaque keys of ``[0-9a-z._-]``.

    The store only ever passes keys it derived from hashes or random ids, so
    a backend never sees user input in a key.

    Note for implementers: ``put`` must be atomic (a reader sees the old blob,
    the new one, or none — never a partial one) and idempotent. The derived
    methods (``put_file``, ``open_read``, ``writer``, ``size``) have correct
    defaults built on the abstract ones; override them to stream.
    """

    name: ClassVar[str] = ""
    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when blobs survive the process (the store verifies them on read).
    persistent: ClassVar[bool] = True
    #: True when reading a blob back costs about a local file read: a put then hashes
    #: the stored copy of its content before sharing it (False for object storage).
    local: ClassVar[bool] = True

    @classmethod
    def from_url(cls, url: str, **options: Any) -> BlobBackend:
        """Build a backend from a URL such as ``file:///data`` or ``s3://bucket/prefix``."""
        return cls(**options)

    @abstractmethod
    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        """Store ``data`` (one buffer or a sequence of chunks) under ``key``, atomically."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the blob, or raise :class:`BlobNotFoundError`."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the blob; False when it was absent."""

    @abstractmethod
    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Every stored key starting with ``prefix`` (any order)."""

    def size(self, key: str) -> int:
        return len(self.get(key))

    def open_read(self, key: str) -> BinaryIO:
        """A readable binary file over the blob; raise :class:`BlobNotFoundError`."""
        return io.BytesIO(self.get(key))

    def put_file(self, key: str, src: BinaryIO) -> None:
        """Store the rest of the readable file ``src`` under ``key``."""
        self.put(key, src.read())

    def writer(self) -> BlobWriter:
        """A :class:`BlobWriter` for a blob whose key is known only once written."""
        return _SpooledWriter(self)

    def close(self) -> None:
        """Release connections and handles. Idempotent."""

    def __enter__(self) -> BlobBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def copy_stream(src: BinaryIO, dst: BinaryIO, chunk: int = 1 << 20) -> None:
    shutil.copyfileobj(src, dst, chunk)


# ------------------------------------------------------------------------ metadata


@dataclass(slots=True)
class EntryRecord:
    """One stored entry, as the metadata backend keeps it.

    ``blob_key`` names the blob in the blob backend (the content hash when the
    store is content-addressable). ``info`` is what the handler needs to load
    the value (dtype, shape, ...); ``metadata`` is the user's JSON-able dict.

    ``inline`` holds the stored bytes themselves for small values kept in the
    metadata row (then ``blob_key`` is ``""``: no blob exists). Only backends
    with ``supports_inline = True`` receive such records.
    """

    key: str
    blob_key: str
    data_type: str
    handler: str
    codec: str
    size: int
    content_hash: str
    created_at: datetime
    info: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    signature: str | None = None
    inline: bytes | None = None


class MetadataBackend(ABC):
    """Maps user keys to :class:`EntryRecord` and counts blob references.

    ``write_lock()`` is a cross-process critical section (a SQLite write
    transaction, a file lock, an advisory lock): the store holds it while it
    decides whether a blob is still referenced and deletes it, and while it
    checks a deduplicated blob exists and commits an entry pointing at it,
    so a delete never removes content a concurrent put just reused.
    """

    name: ClassVar[str] = ""
    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when the backend stores ``EntryRecord.inline``: the store then keeps
    #: small values in the row instead of the blob backend (one lookup per get).
    supports_inline: ClassVar[bool] = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MetadataBackend:
        return cls(**options)

    @abstractmethod
    def get(self, key: str) -> EntryRecord | None: ...

    def get_for_load(self, key: str) -> EntryRecord | None:
        """``get`` for loading a value: the fields a load reads (``key``, ``blob_key``,
        ``handler``, ``codec``, ``size``, ``content_hash``, ``info``, ``inline``) must
        be right; the others may be placeholders. Backends override
        it when reading fewer columns is cheaper (the small ``get`` is the hot path)."""
        return self.get(key)

    @abstractmethod
    def put(self, record: EntryRecord) -> EntryRecord | None:
        """Insert or replace; return the record it replaced, if any."""

    @abstractmethod
    def delete(self, key: str) -> EntryRecord | None:
        """Remove; return the removed record, or None when absent."""

    @abstractmethod
    def list_keys(
        self, prefix: str | None = None, metadata_filter: Mapping[str, Any] | None = None
    ) -> list[str]:
        """Keys starting with ``prefix`` whose user metadata equals every filter item."""

    @abstractmethod
    def count_refs(self, blob_key: str) -> int:
        """How many entries point at ``blob_key``."""

    @abstractmethod
    def iter_records(self) -> Iterator[EntryRecord]: ...

    @abstractmethod
    def write_lock(self) -> Any:
        """A context manager giving exclusive write access across processes."""

    def update_metadata(self, key: str, metadata: Mapping[str, Any]) -> EntryRecord | None:
        """Replace the user metadata of ``key``; return the new record, None when absent."""
        with self.write_lock():
            record = self.get(key)
            if record is None:
                return None
            record.metadata = dict(metadata)
            self.put(record)
            return record

    def blob_keys(self) -> set[str]:
        return {r.blob_key for r in self.iter_records()}

    def close(self) -> None:
        """Release connections and handles. Idempotent."""

    def __enter__(self) -> MetadataBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -------------------------------------------------------------- codecs, handlers


class Codec(ABC):
    """Bytes in, bytes out. ``label`` (``name`` unless a parameter matters for
    decoding, e.g. ``"blosc2:zstd"``) is recorded with every entry it encodes,
    and must itself be a registered codec name."""

    name: ClassVar[str] = ""

    @property
    def label(self) -> str:
        return self.name

    @abstractmethod
    def encode(self, data: Buffer) -> bytes: ...

    @abstractmethod
    def decode(self, data: Buffer) -> bytes: ...


#: Below this many bytes, compressing costs more than it saves.
MIN_COMPRESS = 256
#: Whole values below this many bytes are stored raw: decoding a compressed
#: frame (~1 µs for lz4) is a large share of a small get, for a few hundred bytes saved.
MIN_COMPRESS_VALUE = 2048


#: Values at least this large are probed with a few samples before compressing all of them.
PROBE_MIN_VALUE = 1024 * 1024
_PROBE_SAMPLE = 64 * 1024
_PROBE_SAMPLES = 4


def _saves(encoded: int, raw: int) -> bool:
    # Keep the compressed form only when it saves at least ~3%.
    return encoded * 33 < raw * 32


def encode_if_smaller(codec: Codec, data: Buffer) -> tuple[Buffer, str]:
    """``(encoded, label)``, or ``(data, "none")`` when compressing does not pay."""
    n = len(data) if type(data) is bytes else memoryview(data).nbytes
    if n < MIN_COMPRESS_VALUE or codec.name == "none":
        return data, "none"
    if n >= PROBE_MIN_VALUE:
        # Compressing 100 MB of incompressible bytes costs several times writing
        # them: a few spread samples that do not shrink keep the value raw.
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        stride = (n - _PROBE_SAMPLE) // (_PROBE_SAMPLES - 1)
        packed = sum(
            len(codec.encode(view[i * stride : i * stride + _PROBE_SAMPLE]))
            for i in range(_PROBE_SAMPLES)
        )
        if not _saves(packed, _PROBE_SAMPLE * _PROBE_SAMPLES):
            return data, "none"
    encoded = codec.encode(data)
    if not _saves(len(encoded), n):
        return data, "none"
    return encoded, codec.label


class BufferReader:
    """A read-only file over an in-memory blob whose hash was already checked.

    Handlers may call :meth:`getbuffer` to take zero-copy views of it (writable
    when the underlying buffer is) instead of copying through ``read``.
    """

    def __init__(self, data: Buffer) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def getbuffer(self) -> memoryview:
        return self._view

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int) -> int:
        self._pos = max(0, min(pos, self._view.nbytes))
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._view.nbytes if n is None or n < 0 else min(self._pos + n, self._view.nbytes)
        out = self._view[self._pos : end].tobytes()
        self._pos = end
        return out

    def readinto(self, buffer: Any) -> int:
        dst = memoryview(buffer).cast("B")
        n = min(dst.nbytes, self._view.nbytes - self._pos)
        dst[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._view = memoryview(b"")


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# ~0.5 µs of every small put. Nothing keeps or hashes it after the put.
@dataclass(slots=True)
class Serialized:
    """What a handler produced: the blob's chunks and how to read them back.

    ``codec`` names what was applied to ``chunks`` (``"none"`` when raw);
    ``info`` is JSON-able and handed back to :meth:`TypeHandler.load`.
    """

    chunks: Sequence[Buffer]
    codec: str = "none"
    info: Mapping[str, Any] = field(default_factory=dict)
    data_type: str = ""

    @property
    def nbytes(self) -> int:
        return sum(memoryview(c).nbytes for c in self.chunks)


class TypeHandler(ABC):
    """Turns one kind of object into bytes and back.

    The simple form implements ``dumps``/``loads``; the store then applies
    its default codec. Handlers that compress themselves, or stream, override
    ``dump``/``load``. ``safe = False`` marks handlers whose ``loads`` can run
    code (pickle, dill): the store verifies integrity and signature before
    calling them, never while streaming.
    """

    name: ClassVar[str] = ""
    types: ClassVar[tuple[type, ...]] = ()
    priority: ClassVar[int] = 0
    safe: ClassVar[bool] = True

    @classmethod
    def can_handle(cls, obj: object) -> bool:
        return isinstance(obj, cls.types)

    def dumps(self, obj: Any) -> Buffer:
        raise NotImplementedError(f"{type(self).__name__} implements neither dumps nor dump")

    def loads(self, data: bytes) -> Any:
        raise NotImplementedError(f"{type(self).__name__} implements neither loads nor load")

    def dump(self, obj: Any, codec: Codec) -> Serialized:
        """Serialise ``obj``, compressing with ``codec`` unless the handler knows better."""
        data, label = encode_if_smaller(codec, self.dumps(obj))
        return Serialized(chunks=[data], codec=label, data_type=_type_name(obj))

    def load(self, reader: BinaryIO, info: Mapping[str, Any], codec: Codec) -> Any:
        """Read the whole blob from ``reader`` and rebuild the value."""
        return self.loads(codec.decode(reader.read()))

    def load_bytes(self, data: bytes, info: Mapping[str, Any], codec: Codec) -> Any:
        """Rebuild the value from the whole stored blob, already in memory and checked
        (small values kept in the metadata row). Override to skip the reader."""
        return self.load(BufferReader(data), info, codec)  # type: ignore[arg-type]


def _type_name(obj: object) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def type_name(obj: object) -> str:
    """``module.QualName`` of ``type(obj)`` (just the name for builtins)."""
    return _type_name(obj)


def chunks_of(data: Buffer | Iterable[Buffer]) -> list[Buffer]:
    if isinstance(data, bytes | bytearray | memoryview):
        return [data]
    return list(data)
