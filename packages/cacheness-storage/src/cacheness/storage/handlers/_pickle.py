"""Any picklable object: pickle protocol 5 with out-of-band buffers; dill as a fallback.

Large buffers inside the object (numpy arrays in dicts, dataclasses, lists)
leave the pickle stream: they are written from their own memory as segments
of a frame (see :mod:`._framing`), compressed like arrays when it pays, and
handed back to ``pickle.loads`` as views of the blob that was read, so they
are neither copied twice on put nor on get. A pickle without such buffers is
stored as the pickle stream alone (compressed by the store's codec when that
saves space), which keeps small values small and fast.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, ClassVar

from cacheness.storage.abc import Codec, Serialized, TypeHandler, encode_if_smaller, type_name
from cacheness.storage.handlers._framing import FrameReader, FrameWriter, plan_for

__all__ = ["DillHandler", "PickleHandler"]

#: Buffers smaller than this stay in the pickle stream (a segment costs ~100 bytes).
OOB_MIN = 64 * 1024


class PickleHandler(TypeHandler):
    """Any picklable object, with pickle protocol 5. Last resort: lowest priority.

    ``safe = False``: unpickling runs code, so the store checks integrity and
    signatures before calling :meth:`load`.
    """

    name: ClassVar[str] = "pickle"
    types: ClassVar[tuple[type, ...]] = (object,)
    priority: ClassVar[int] = -100
    safe: ClassVar[bool] = False

    def _dumps(self, obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool]) -> bytes:
        return pickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)

    def _loads(self, data: Any, buffers: list[memoryview]) -> Any:
        return pickle.loads(data, buffers=buffers)

    def dumps(self, obj: Any) -> bytes:
        return self._dumps(obj, lambda pb: True)

    def loads(self, data: bytes) -> Any:
        return self._loads(data, [])

    def dump(self, obj: Any, codec: Codec) -> Serialized:
        buffers: list[tuple[memoryview, int]] = []

        def out_of_band(pb: pickle.PickleBuffer) -> bool:
            try:
                raw = pb.raw()
            except BufferError:  # not contiguous: pickle copies it in-band
                return True
            if raw.nbytes < OOB_MIN:
                return True
            buffers.append((raw, memoryview(pb).itemsize))
            return False

        payload = self._dumps(obj, out_of_band)
        data_type = type_name(obj)
        if not buffers:
            data, label = encode_if_smaller(codec, payload)
            return Serialized([data], label, {}, data_type)
        writer = FrameWriter(plan_for(codec))
        writer.add(payload, 1)
        for raw, itemsize in buffers:
            writer.add(raw, itemsize)
        chunks, label = writer.finish({"buffers": len(buffers)})
        return Serialized(chunks=chunks, codec=label, info={"frame": True}, data_type=data_type)

    def load_bytes(self, data: bytes, info: Mapping[str, Any], codec: Codec) -> Any:
        if info:  # a frame: only values with big out-of-band buffers have one
            return super().load_bytes(data, info, codec)
        return self._loads(data if codec.name == "none" else codec.decode(data), [])

    def load(self, reader: BinaryIO, info: Mapping[str, Any], codec: Codec) -> Any:
        if not info.get("frame"):
            data = reader.read()
            if codec.name != "none":
                data = codec.decode(data)
            return self._loads(data, [])
        frame = FrameReader(reader, codec)
        payload = frame.read(writable=False)
        buffers = [frame.read() for _ in range(int(frame.meta["buffers"]))]
        return self._loads(payload, buffers)


class DillHandler(PickleHandler):
    """Lambdas, closures, local classes: what pickle cannot do, through dill.

    Never chosen by type: the store falls back to it when pickle fails and
    dill is allowed (``allow_dill``, off with ``require_signatures``).
    """

    name: ClassVar[str] = "dill"
    types: ClassVar[tuple[type, ...]] = ()
    priority: ClassVar[int] = -200

    def _dumps(self, obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool]) -> bytes:
        import dill

        # dill's Pickler ignores buffer_callback: its buffers stay in-band.
        return dill.dumps(obj, protocol=5)

    def _loads(self, data: Any, buffers: list[memoryview]) -> Any:
        import dill

        return dill.loads(data)
