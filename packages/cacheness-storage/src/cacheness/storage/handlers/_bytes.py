from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

from cacheness.storage.abc import Codec, Serialized, TypeHandler

__all__ = ["BytesHandler"]


class BytesHandler(TypeHandler):
    """bytes, bytearray and memoryview, stored raw (compressed by the codec).

    ``bytes`` and ``memoryview`` come back as ``bytes``, ``bytearray`` as ``bytearray``.
    """

    name: ClassVar[str] = "bytes"
    types: ClassVar[tuple[type, ...]] = (bytes, bytearray, memoryview)

    def dump(self, obj: Any, codec: Codec) -> Serialized:
        kind = "bytearray" if isinstance(obj, bytearray) else "bytes"
        view = memoryview(obj).cast("B") if isinstance(obj, memoryview) else obj
        data = view if codec.name == "none" else codec.encode(view)
        return Serialized(chunks=[data], codec=codec.name, info={"kind": kind}, data_type=kind)

    def load(self, reader: BinaryIO, info: Mapping[str, Any], codec: Codec) -> Any:
        raw = reader.read()
        if codec.name != "none":
            raw = codec.decode(raw)
        return bytearray(raw) if info.get("kind") == "bytearray" else bytes(raw)
