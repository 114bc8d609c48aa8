"""A small container format for handlers that write several buffers (arrays, columns,
pickle out-of-band buffers) without concatenating them.

Layout::

    b"CNF1" | u32 header length | header (JSON) | zero padding to 64
    segment | zero padding to 64 | segment | zero padding to 64 | ...

The header holds the handler's own ``meta`` and, for each logical buffer,
its raw length and the segments it was split into: ``[tag, stored, raw]``
with tag ``"r"`` (raw bytes), ``"b"`` (one blosc2 chunk, self-describing) or
``"c"`` (the entry's codec). Large buffers are split into
:data:`COMPRESS_CHUNK`-sized segments so that each blosc2 chunk stays under
its 2 GiB limit and reading needs only one segment of scratch memory.
Segments start at multiples of 64 bytes so views into an in-memory blob are
aligned for any dtype.

Writing never copies a raw buffer: the segment *is* the caller's memory.
Reading decompresses (or ``readinto``\\ s) straight into the destination.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cacheness.storage.abc import MIN_COMPRESS, Buffer, Codec
from cacheness.storage.codecs import (
    Blosc2Codec,
    Blosc2Lz4Codec,
    Blosc2ZlibCodec,
    Blosc2ZstdCodec,
    GzipCodec,
    Lz4Codec,
    ZstdCodec,
)

__all__ = ["COMPRESS_CHUNK", "MAGIC", "FrameReader", "FrameWriter", "Plan", "is_frame", "plan_for"]

MAGIC = b"CNF1"
ALIGN = 64
#: Raw bytes per compressed segment (monkeypatched small in tests).
COMPRESS_CHUNK = 16 * 1024 * 1024
#: Bytes per ``readinto`` call when streaming a raw segment (keeps hashing cache-warm).
READ_CHUNK = 16 * 1024 * 1024
#: Buffers at least this large are probed with samples before compressing all of them.
SAMPLE_MIN = 1024 * 1024
_SAMPLE = 64 * 1024
_SAMPLES = 4
# Keep compression only when it saves at least this share (ratio >= 1.25 for the
# whole-buffer probe; a 10% saving per segment once we compress anyway):
# decompressing near-random data is slower than reading it.
_PROBE_KEEP = 0.8
_SEGMENT_KEEP = 0.9
_PAD = bytes(ALIGN)


def _pad(n: int) -> int:
    return -n % ALIGN


def is_frame(data: Buffer) -> bool:
    return bytes(memoryview(data)[:4]) == MAGIC


@dataclass(frozen=True, slots=True)
class Plan:
    """How a handler compresses buffers, derived from the store's codec.

    Array-like buffers go through blosc2 (byte shuffle by item size, several
    threads) whichever of lz4/zstd/gzip/blosc2 the store names, mapping
    gzip to blosc2's zlib; a plugin codec is applied as it is.
    """

    codec: Codec
    blosc: Blosc2Codec | None = None

    @property
    def compresses(self) -> bool:
        return self.codec.name != "none"


def plan_for(codec: Codec) -> Plan:
    if isinstance(codec, Blosc2Codec):
        return Plan(codec, codec)
    if isinstance(codec, Lz4Codec):
        return Plan(codec, Blosc2Lz4Codec(5))
    if isinstance(codec, ZstdCodec):
        return Plan(codec, Blosc2ZstdCodec(min(max(codec.level, 1), 9)))
    if isinstance(codec, GzipCodec):
        return Plan(codec, Blosc2ZlibCodec(min(max(codec.level, 1), 9)))
    return Plan(codec, None)


@dataclass
class FrameWriter:
    """Collects buffers as segments; :meth:`finish` returns the blob's chunks."""

    plan: Plan
    _chunks: list[Buffer] = field(default_factory=list)
    _bufs: list[list[Any]] = field(default_factory=list)
    _used: set[str] = field(default_factory=set)

    def add(
        self, data: Buffer, typesize: int = 1, *, compress: bool = True, keep: float = _PROBE_KEEP
    ) -> int:
        """Append one logical buffer; return its index. ``data`` is not copied when kept raw.

        ``keep``: compress only when a probe shrinks to this share or less
        (lower it for data that compresses slowly, such as text).
        """
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        n = view.nbytes
        segments: list[list[Any]] = []
        if not (
            compress
            and self.plan.compresses
            and n >= MIN_COMPRESS
            and self._worth(view, typesize, keep)
        ):
            self._segment(segments, "r", view, n)
        else:
            step = max(COMPRESS_CHUNK - COMPRESS_CHUNK % max(typesize, 1), max(typesize, 1))
            for start in range(0, n, step):
                piece = view[start : start + step]
                packed = self._encode(piece, typesize)
                if len(packed) <= piece.nbytes * _SEGMENT_KEEP:
                    self._segment(segments, "b" if self.plan.blosc else "c", packed, piece.nbytes)
                else:
                    self._segment(segments, "r", piece, piece.nbytes)
        self._bufs.append([n, segments])
        return len(self._bufs) - 1

    def _encode(self, piece: memoryview, typesize: int) -> bytes:
        if self.plan.blosc is not None:
            return self.plan.blosc.compress_typed(piece, typesize)
        return self.plan.codec.encode(piece)

    def _worth(self, view: memoryview, typesize: int, keep: float) -> bool:
        """Probe a few samples: incompressible data (random floats) is stored raw."""
        n = view.nbytes
        if n < SAMPLE_MIN:
            return True
        size = _SAMPLE - _SAMPLE % max(typesize, 1) or _SAMPLE
        stride = (n - size) // (_SAMPLES - 1)
        stride -= stride % max(typesize, 1)
        packed = 0
        for i in range(_SAMPLES):
            packed += len(self._encode(view[i * stride : i * stride + size], typesize))
        return packed <= size * _SAMPLES * keep

    def _segment(self, segments: list[list[Any]], tag: str, data: Buffer, raw: int) -> None:
        stored = memoryview(data).nbytes
        segments.append([tag, stored, raw])
        self._used.add(tag)
        self._chunks.append(data)
        if _pad(stored):
            self._chunks.append(_PAD[: _pad(stored)])

    def finish(self, meta: Mapping[str, Any]) -> tuple[list[Buffer], str]:
        """``(chunks, codec label)``; the label names what was applied (``"none"`` if nothing)."""
        header = json.dumps(
            {"meta": meta, "bufs": self._bufs}, separators=(",", ":"), allow_nan=False
        ).encode()
        head = MAGIC + struct.pack("<I", len(header)) + header
        head += _PAD[: _pad(len(head))]
        if "c" in self._used:
            label = self.plan.codec.label
        elif "b" in self._used:
            assert self.plan.blosc is not None
            label = self.plan.blosc.label
        else:
            label = "none"
        return [head, *self._chunks], label


def read_exact(reader: BinaryIO, n: int) -> bytes:
    data = reader.read(n)
    if len(data) != n:
        raise ValueError(f"the blob ends early: wanted {n} bytes, got {len(data)}")
    return data


def readinto_exact(reader: BinaryIO, dest: memoryview) -> None:
    pos, n = 0, dest.nbytes
    while pos < n:
        got = reader.readinto(dest[pos : pos + READ_CHUNK])  # type: ignore[attr-defined]
        if not got:
            raise ValueError(f"the blob ends early: wanted {n} bytes, got {pos}")
        pos += got


class FrameReader:
    """Reads a frame back, one logical buffer at a time, in the order written."""

    def __init__(self, reader: BinaryIO, codec: Codec) -> None:
        self._reader = reader
        self._codec = codec
        getbuffer = getattr(reader, "getbuffer", None)
        # A whole in-memory blob (hash already checked): hand out views, not copies.
        self._mem: memoryview | None = getbuffer() if getbuffer is not None else None
        start = read_exact(reader, 8)
        if start[:4] != MAGIC:
            raise ValueError("not a cacheness frame (bad magic); the blob is corrupt")
        (hlen,) = struct.unpack("<I", start[4:])
        header = json.loads(read_exact(reader, hlen))
        self._skip(_pad(8 + hlen))
        self.meta: dict[str, Any] = header["meta"]
        self._bufs: list[list[Any]] = header["bufs"]
        self._next = 0

    def __len__(self) -> int:
        return len(self._bufs)

    def raw_size(self, index: int | None = None) -> int:
        """Raw length of buffer ``index`` (the next one by default)."""
        return int(self._bufs[self._next if index is None else index][0])

    def _skip(self, n: int) -> None:
        if n:
            read_exact(self._reader, n)

    def _take(self, n: int) -> Buffer:
        """The next ``n`` stored bytes: a view when in memory, else freshly read."""
        if self._mem is not None:
            pos = self._reader.tell()
            if pos + n > self._mem.nbytes:
                raise ValueError("the blob ends early")
            self._reader.seek(pos + n)
            return self._mem[pos : pos + n]
        return read_exact(self._reader, n)

    def read(self, dest: memoryview | None = None, *, writable: bool = True) -> memoryview:
        """The next buffer: into ``dest`` (a byte view of its exact size) when given.

        Without ``dest``, a raw buffer of an in-memory blob comes back as a view
        of it (no copy) when that is writable or ``writable=False``.
        """
        if self._next >= len(self._bufs):
            raise ValueError("the frame has no more buffers; the blob is corrupt")
        n, segments = self._bufs[self._next]
        self._next += 1
        if dest is None:
            if (
                self._mem is not None
                and len(segments) == 1
                and segments[0][0] == "r"
                and (not writable or not self._mem.readonly)
            ):
                view = self._take(int(n))
                self._skip(_pad(int(n)))
                return memoryview(view)
            dest = _alloc(int(n))
        if dest.nbytes != n:
            raise ValueError(f"buffer size mismatch: frame says {n}, destination has {dest.nbytes}")
        pos = 0
        for tag, stored, raw in segments:
            out = dest[pos : pos + raw]
            if tag == "r":
                if self._mem is not None:
                    out[:] = self._take(raw)
                else:
                    readinto_exact(self._reader, out)
            elif tag == "b":
                Blosc2Codec().decompress_into(self._take(stored), out)
            elif tag == "c":
                decoded = self._codec.decode(self._take(stored))
                if len(decoded) != raw:
                    raise ValueError("a segment decoded to the wrong size; the blob is corrupt")
                out[:] = decoded
            else:
                raise ValueError(f"unknown segment tag {tag!r}; the blob is corrupt")
            self._skip(_pad(stored))
            pos += raw
        return dest


def _alloc(n: int) -> memoryview:
    """Fresh writable memory; numpy's allocator uses huge pages, faulting it in ~3x faster."""
    if n >= SAMPLE_MIN:
        import numpy as np

        return np.empty(n, dtype=np.uint8).data
    return memoryview(bytearray(n))
