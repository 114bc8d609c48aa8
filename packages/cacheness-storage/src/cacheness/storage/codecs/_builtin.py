from __future__ import annotations

import gzip
from typing import Any, ClassVar

from cacheness.storage.abc import Buffer, Codec

__all__ = ["BUILTIN_CODECS", "Blosc2Codec", "GzipCodec", "Lz4Codec", "NoneCodec", "ZstdCodec"]


class NoneCodec(Codec):
    name: ClassVar[str] = "none"

    def encode(self, data: Buffer) -> bytes:
        return bytes(data)

    def decode(self, data: Buffer) -> bytes:
        return bytes(data)


class Lz4Codec(Codec):
    name: ClassVar[str] = "lz4"

    def __init__(self, level: int = 0) -> None:
        self.level = level

    def encode(self, data: Buffer) -> bytes:
        import lz4.frame

        return lz4.frame.compress(data, compression_level=self.level)  # type: ignore[no-any-return]

    def decode(self, data: Buffer) -> bytes:
        import lz4.frame

        return lz4.frame.decompress(data)  # type: ignore[no-any-return]


class ZstdCodec(Codec):
    name: ClassVar[str] = "zstd"

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self._c: Any = None
        self._d: Any = None

    def encode(self, data: Buffer) -> bytes:
        import zstandard

        # A fresh compressor per call: ZstdCompressor is not thread-safe.
        return zstandard.ZstdCompressor(level=self.level).compress(data)  # type: ignore[no-any-return]

    def decode(self, data: Buffer) -> bytes:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=0)  # type: ignore[no-any-return]


class GzipCodec(Codec):
    name: ClassVar[str] = "gzip"

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def encode(self, data: Buffer) -> bytes:
        return gzip.compress(data, compresslevel=self.level, mtime=0)

    def decode(self, data: Buffer) -> bytes:
        return gzip.decompress(data)


class Blosc2Codec(Codec):
    """blosc2 with byte shuffle and LZ4 inside; byte-oriented (typesize 1) for plain bytes."""

    name: ClassVar[str] = "blosc2"

    def encode(self, data: Buffer) -> bytes:
        import blosc2

        return blosc2.compress2(memoryview(data).cast("B"), typesize=1)  # type: ignore[no-any-return]

    def decode(self, data: Buffer) -> bytes:
        import blosc2

        return blosc2.decompress2(data)  # type: ignore[no-any-return]


BUILTIN_CODECS: list[type[Codec]] = [NoneCodec, Lz4Codec, ZstdCodec, GzipCodec, Blosc2Codec]
