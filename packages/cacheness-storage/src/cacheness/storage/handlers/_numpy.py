"""numpy arrays: the array's own memory is the blob (raw or blosc2-compressed).

Put writes the array's buffer without copying it (contiguous arrays) or
compresses it in chunks with blosc2, byte-shuffled by item size; a probe of a
few samples keeps incompressible data (random floats) raw, because reading
raw bytes is faster than decompressing them. Get allocates the result with
``np.empty`` and reads or decompresses straight into it, so memory grows by
the array's size and no more.

The blob starts with a header naming dtype, shape and order, so the content
hash (and with it the key of a content-addressed entry) covers them: two
arrays with equal bytes but different dtypes are different entries.

Object arrays (and dtypes whose bytes hold pointers) are declined, and the
store falls back to the pickle handler for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

from cacheness.storage.abc import Codec, Serialized, TypeHandler
from cacheness.storage.handlers._framing import FrameReader, FrameWriter, plan_for

__all__ = ["NumpyHandler", "array_bytes", "decode_dtype", "encode_dtype"]


def _is_ndarray(obj: object) -> bool:
    t = type(obj)
    return t.__name__ == "ndarray" and t.__module__ == "numpy"


def _tuplify(descr: Any) -> Any:
    """JSON turned the tuples of a structured ``descr`` into lists; turn them back."""
    if isinstance(descr, str):
        return descr
    fields = []
    for item in descr:
        name = tuple(item[0]) if isinstance(item[0], list) else item[0]
        rest = [_tuplify(item[1])]
        if len(item) > 2:
            rest.append(tuple(item[2]))
        fields.append((name, *rest))
    return fields


def encode_dtype(dtype: Any) -> Any:
    """A JSON-able description of a plain (pointer-free) dtype."""
    import numpy as np

    if dtype.hasobject or dtype.kind == "T" or dtype.num >= 256 or dtype.itemsize == 0:
        raise TypeError(f"dtype {dtype} holds pointers or has no fixed size; it is pickled")
    if dtype.fields is None and dtype.subdtype is None:
        return dtype.str
    return {"descr": np.lib.format.dtype_to_descr(dtype), "align": dtype.isalignedstruct}


def decode_dtype(spec: Any) -> Any:
    import numpy as np

    if isinstance(spec, str):
        return np.dtype(spec)
    dtype = np.lib.format.descr_to_dtype(_tuplify(spec["descr"]))
    fields, names = dtype.fields, dtype.names
    if spec.get("align") and not dtype.isalignedstruct and fields is not None and names:
        layout: Any = {
            "names": names,
            "formats": [fields[n][0] for n in names],
            "offsets": [fields[n][1] for n in names],
            "itemsize": dtype.itemsize,
            "aligned": True,
        }
        dtype = np.dtype(layout)
    return dtype


def array_bytes(arr: Any) -> tuple[Any, str]:
    """``(contiguous array, order)`` whose memory can be written as it is."""
    import numpy as np

    order = "F" if arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.ascontiguousarray(arr)
    return arr, order


def _byte_view(arr: Any, order: str) -> memoryview:
    import numpy as np

    return arr.reshape(-1, order=order).view(np.uint8).data


class NumpyHandler(TypeHandler):
    """``numpy.ndarray`` (exactly; subclasses such as ``np.matrix`` are pickled)."""

    name: ClassVar[str] = "numpy"
    priority: ClassVar[int] = 0

    @classmethod
    def can_handle(cls, obj: object) -> bool:
        return _is_ndarray(obj)

    def dump(self, obj: Any, codec: Codec) -> Serialized:
        dtype_spec = encode_dtype(obj.dtype)
        arr, order = array_bytes(obj)
        writer = FrameWriter(plan_for(codec))
        writer.add(_byte_view(arr, order), arr.dtype.itemsize)
        meta = {"dtype": dtype_spec, "shape": list(arr.shape), "order": order}
        chunks, label = writer.finish(meta)
        info = {"dtype": str(arr.dtype), "shape": list(arr.shape), "order": order}
        return Serialized(chunks=chunks, codec=label, info=info, data_type="numpy.ndarray")

    def load(self, reader: BinaryIO, info: Mapping[str, Any], codec: Codec) -> Any:
        import numpy as np

        frame = FrameReader(reader, codec)
        meta = frame.meta
        shape = tuple(int(n) for n in meta["shape"])
        dtype = decode_dtype(meta["dtype"])
        # Before allocating: a large blob's hash is only known at its end, and a
        # damaged shape must not allocate (or fail to allocate) a huge array first.
        if len(frame) != 1 or math.prod(shape) * dtype.itemsize != frame.raw_size(0):
            raise ValueError("the array's shape does not match its bytes; the blob is corrupt")
        arr = np.empty(shape, dtype=dtype, order=meta["order"])
        frame.read(_byte_view(arr, meta["order"]))
        return arr
