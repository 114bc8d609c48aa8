"""Built-in codecs: bytes in, bytes out; the name is stored with each entry."""

from cacheness.storage.codecs._builtin import (
    BUILTIN_CODECS,
    Blosc2Codec,
    GzipCodec,
    Lz4Codec,
    NoneCodec,
    ZstdCodec,
)

__all__ = ["BUILTIN_CODECS", "Blosc2Codec", "GzipCodec", "Lz4Codec", "NoneCodec", "ZstdCodec"]
