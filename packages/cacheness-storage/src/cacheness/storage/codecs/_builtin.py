"""Built-in codecs: bytes in, bytes out; the applied name is stored with each entry.

A codec's :attr:`~cacheness.storage.abc.Codec.label` is what an entry records
(``"blosc2:lz4"`` for blosc2 with its inner LZ4), and every label is itself a
registered name, so reading an entry never depends on the store's default.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from typing import Any, ClassVar

from cacheness.storage.abc import Buffer, Codec
from cacheness.storage.errors import CacheConfigError

__all__ = [
    "BLOSC2_INNER_CODECS",
    "BUILTIN_CODECS",
    "Blosc2BloscLZCodec",
    "Blosc2Codec",
    "Blosc2Lz4Codec",
    "Blosc2Lz4hcCodec",
    "Blosc2ZlibCodec",
    "Blosc2ZstdCodec",
    "GzipCodec",
    "Lz4Codec",
    "NoneCodec",
    "ZstdCodec",
    "blosc2_threads",
]

#: Inner codecs of blosc2 a store may name as ``"blosc2:<inner>"``.
BLOSC2_INNER_CODECS = ("blosclz", "lz4", "lz4hc", "zstd", "zlib")

# blosc2 refuses single buffers near 2 GiB; larger ones are split into frames of this size.
_BLOSC2_MAX = 1 << 30
_BIG_MAGIC = b"CNB2"


@functools.cache
def _cores() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def blosc2_threads(nbytes: int | None = None) -> int:
    """Threads blosc2 may use: every core (capped) for large buffers; one below
    1 MiB, where waking threads costs more than it saves."""
    return 1 if nbytes is not None and nbytes < (1 << 20) else _cores()


def _check_level(name: str, level: int, low: int, high: int) -> int:
    if not isinstance(level, int) or isinstance(level, bool) or not low <= level <= high:
        raise CacheConfigError(
            f"compression_level for {name!r} must be an int in [{low}, {high}], got {level!r}"
        )
    return level


class NoneCodec(Codec):
    name: ClassVar[str] = "none"

    def encode(self, data: Buffer) -> bytes:
        return bytes(data)

    def decode(self, data: Buffer) -> bytes:
        return bytes(data)


class Lz4Codec(Codec):
    name: ClassVar[str] = "lz4"

    def __init__(self, level: int = 0) -> None:
        self.level = _check_level(self.name, level, -16, 16)

    def encode(self, data: Buffer) -> bytes:
        import lz4.frame

        return lz4.frame.compress(data, compression_level=self.level, store_size=True)

    def decode(self, data: Buffer) -> bytes:
        import lz4.frame

        return lz4.frame.decompress(data)


class ZstdCodec(Codec):
    name: ClassVar[str] = "zstd"

    def __init__(self, level: int = 3) -> None:
        self.level = _check_level(self.name, level, -7, 22)

    def encode(self, data: Buffer) -> bytes:
        import zstandard

        # A fresh compressor per call: ZstdCompressor is not thread-safe.
        return zstandard.ZstdCompressor(level=self.level).compress(data)

    def decode(self, data: Buffer) -> bytes:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=0)


class GzipCodec(Codec):
    name: ClassVar[str] = "gzip"

    def __init__(self, level: int = 6) -> None:
        self.level = _check_level(self.name, level, 0, 9)

    def encode(self, data: Buffer) -> bytes:
        return gzip.compress(data, compresslevel=self.level, mtime=0)

    def decode(self, data: Buffer) -> bytes:
        return gzip.decompress(data)


class Blosc2Codec(Codec):
    """blosc2 with an inner codec (LZ4 by default), multi-threaded.

    For plain bytes it works byte-wise (typesize 1); the array handlers call
    :meth:`compress_typed` with the item size, so byte shuffle groups the
    bytes of each number. Any blosc2 codec decodes what any other wrote: the
    inner codec is in blosc2's own chunk header.
    """

    name: ClassVar[str] = "blosc2"
    inner: ClassVar[str] = "lz4"

    def __init__(self, level: int = 5) -> None:
        self.level = _check_level(self.name, level, 0, 9)

    @property
    def label(self) -> str:
        return f"blosc2:{self.inner}"

    def compress_typed(self, data: Buffer, typesize: int, *, shuffle: bool = True) -> bytes:
        """One blosc2 chunk of ``data`` (at most 1 GiB), shuffled by ``typesize`` bytes."""
        import blosc2

        typesize = typesize if 1 <= typesize <= 255 else 1
        filters = [blosc2.Filter.SHUFFLE if shuffle and typesize > 1 else blosc2.Filter.NOFILTER]
        return blosc2.compress2(
            data,
            typesize=typesize,
            clevel=self.level,
            codec=getattr(blosc2.Codec, self.inner.upper()),
            filters=filters,
            nthreads=blosc2_threads(memoryview(data).nbytes),
        )

    def decompress_into(self, data: Buffer, dst: memoryview) -> None:
        """Decompress one chunk straight into ``dst`` (writable, exactly the raw size)."""
        import blosc2

        blosc2.decompress2(data, dst=dst, nthreads=blosc2_threads(dst.nbytes))

    def encode(self, data: Buffer) -> bytes:
        view = memoryview(data).cast("B")
        if view.nbytes <= _BLOSC2_MAX:
            return self.compress_typed(view, 1)
        # Framed: magic, count, then (length, chunk) pairs. blosc2 chunks start with
        # a small version byte, never with the magic, so decode can tell them apart.
        parts = [
            self.compress_typed(view[i : i + _BLOSC2_MAX], 1)
            for i in range(0, view.nbytes, _BLOSC2_MAX)
        ]
        out = [_BIG_MAGIC, struct.pack("<Q", len(parts))]
        for part in parts:
            out += [struct.pack("<Q", len(part)), part]
        return b"".join(out)

    def decode(self, data: Buffer) -> bytes:
        import blosc2

        view = memoryview(data).cast("B")
        if view[:4] != _BIG_MAGIC:
            return blosc2.decompress2(view, nthreads=blosc2_threads())
        (count,) = struct.unpack_from("<Q", view, 4)
        pos, out = 12, bytearray()
        for _ in range(count):
            (n,) = struct.unpack_from("<Q", view, pos)
            out += blosc2.decompress2(view[pos + 8 : pos + 8 + n], nthreads=blosc2_threads())
            pos += 8 + n
        return bytes(out)


def _blosc2_variant(inner: str) -> type[Blosc2Codec]:
    cls_name = f"Blosc2{inner.capitalize()}Codec"
    attrs: dict[str, Any] = {"name": f"blosc2:{inner}", "inner": inner, "__module__": __name__}
    attrs["__doc__"] = f"blosc2 with the inner codec {inner}."
    return type(cls_name, (Blosc2Codec,), attrs)


Blosc2BloscLZCodec = _blosc2_variant("blosclz")
Blosc2Lz4Codec = _blosc2_variant("lz4")
Blosc2Lz4hcCodec = _blosc2_variant("lz4hc")
Blosc2ZstdCodec = _blosc2_variant("zstd")
Blosc2ZlibCodec = _blosc2_variant("zlib")

BUILTIN_CODECS: list[type[Codec]] = [
    NoneCodec,
    Lz4Codec,
    ZstdCodec,
    GzipCodec,
    Blosc2Codec,
    Blosc2BloscLZCodec,
    Blosc2Lz4Codec,
    Blosc2Lz4hcCodec,
    Blosc2ZstdCodec,
    Blosc2ZlibCodec,
]
