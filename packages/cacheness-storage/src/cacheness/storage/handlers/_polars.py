"""polars DataFrame and Series (optional extra), through Arrow IPC.

polars writes its own columns as Arrow IPC (every dtype, nulls, categoricals,
time zones round-trip); the IPC bytes become one buffer of a frame,
compressed with blosc2 when that pays. polars is imported only when a
polars value is stored or loaded: values are recognised by
``type(obj).__module__``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

from cacheness.storage.abc import Codec, Serialized, TypeHandler
from cacheness.storage.errors import CacheConfigError
from cacheness.storage.handlers._framing import FrameReader, FrameWriter, plan_for

__all__ = ["PolarsHandler"]


def _import_polars() -> Any:
    try:
        import polars
    except ImportError:
        raise CacheConfigError(
            "this entry holds a polars value and polars is not installed: "
            "pip install 'cacheness-storage[polars]'"
        ) from None
    return polars


class PolarsHandler(TypeHandler):
    """``polars.DataFrame`` and ``polars.Series``.

    ``safe = False``: Arrow IPC is trusted when read, so the store checks the
    blob's hash first.
    """

    name: ClassVar[str] = "polars"
    priority: ClassVar[int] = 0
    safe: ClassVar[bool] = False

    @classmethod
    def can_handle(cls, obj: object) -> bool:
        t = type(obj)
        top = t.__module__.partition(".")[0]
        return top == "polars" and t.__name__ in ("DataFrame", "Series")

    def dump(self, obj: Any, codec: Codec) -> Serialized:
        pl = _import_polars()
        if type(obj) is pl.Series:
            frame, kind, name = obj.to_frame(), "Series", obj.name
        elif type(obj) is pl.DataFrame:
            frame, kind, name = obj, "DataFrame", None
        else:
            raise TypeError(f"{type(obj).__qualname__} is a polars subclass; it is pickled")
        sink = io.BytesIO()
        frame.write_ipc(sink, compression="uncompressed")
        writer = FrameWriter(plan_for(codec))
        writer.add(sink.getbuffer(), 8)
        chunks, label = writer.finish({"type": kind, "name": name})
        info = {"type": kind, "shape": list(obj.shape)}
        return Serialized(chunks=chunks, codec=label, info=info, data_type=f"polars.{kind}")

    def load(self, reader: BinaryIO, info: Mapping[str, Any], codec: Codec) -> Any:
        pl = _import_polars()
        frame = FrameReader(reader, codec)
        data = frame.read(writable=False)
        out = pl.read_ipc(io.BytesIO(data))
        if frame.meta["type"] == "Series":
            return out.to_series(0).rename(frame.meta["name"])
        return out
