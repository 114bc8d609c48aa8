from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

from cacheness.storage.abc import Codec, Serialized, TypeHandler, encode_if_smaller

__all__ = ["BytesHandler"]


class BytesHandler(TypeHandler):
    """bytes, bytearray and memoryview, stored raw (compressed by the codec when it pays).

    ``bytes`` and ``memoryview`` come back as ``bytes``, ``bytearray`` as ``bytearray``.
    """

    name: ClassVar[str] = "bytes"
    types: ClassVar[tuple[type, ...]] = (bytes, bytearray, memoryview)

    def dump(self, obj: Any, codec: Codec) -> Serialized:
        kind = "bytearray" if isinstance(obj, bytearray) else "bytes"
        view = memoryview(obj)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
        data, label = encode_if_smaller(codec, view)
        return Serialized(chunks=[data], codec=label, info={"kind": kind}, data_type=kind)

    def load_bytes(self, data: bytes, info: Mapping[str, Any], codec: Codec) -> Any:
        raw = data if codec.name == "none" else codec.decode(data)
        return bytearray(raw) if info.get("kind") == "bytearray" else bytes(raw)

    def load(self, reader: BinaryIO, info: Mapping[str, Any], codec: Codec) -> Any:
        raw: Any = reader.read()
        if codec.name != "none":
            raw = codec.decode(raw)
        return bytearray(raw) if info.get("kind") == "bytearray" else bytes(raw)
