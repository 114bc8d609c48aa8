"""Built-in codecs: bytes in, bytes out; the applied name is stored with each entry."""

from cacheness.storage.codecs._builtin import (
    BLOSC2_INNER_CODECS,
    BUILTIN_CODECS,
    Blosc2BloscLZCodec,
    Blosc2Codec,
    Blosc2Lz4Codec,
    Blosc2Lz4hcCodec,
    Blosc2ZlibCodec,
    Blosc2ZstdCodec,
    GzipCodec,
    Lz4Codec,
    NoneCodec,
    ZstdCodec,
    blosc2_threads,
)

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
