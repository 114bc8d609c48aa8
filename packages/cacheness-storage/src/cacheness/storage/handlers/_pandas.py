"""pandas DataFrame and Series, stored column by column (never a pickle of the frame).

Each column becomes one or more buffers of a frame (see :mod:`._framing`):
numpy-backed columns (numbers, bools, datetimes, timedeltas) as their own
memory, blosc2-compressed when that pays; categoricals as codes plus their
categories; nullable masked arrays (``Int64``, ``boolean``, ``Float64``) as
values plus mask; strings (``str``/``string``, pyarrow- or python-backed,
and object columns holding only ``str``/``None``) as Arrow buffers;
tz-aware datetimes as UTC ticks plus the zone. The index and the columns are
stored the same way (``RangeIndex`` as three numbers, ``MultiIndex`` as
levels plus codes), with names, ``attrs`` and ``flags``.

What has no exact columnar form here (Period, Interval, Sparse, ``ArrowDtype``
columns, object columns of arbitrary objects, non-JSON ``attrs``, subclasses)
is declined with ``TypeError``, and the store falls back to pickling the value.

pandas is imported only to rebuild a value; values are recognised by
``type(obj).__module__``.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from typing import Any, BinaryIO, ClassVar

from cacheness.storage.abc import Codec, Serialized, TypeHandler
from cacheness.storage.handlers._framing import FrameReader, FrameWriter, plan_for
from cacheness.storage.handlers._numpy import array_bytes, decode_dtype, encode_dtype

__all__ = ["PandasHandler"]

# Object arrays up to this size may be stored as a JSON list of labels (column names).
_SMALL_OBJECT = 10_000


# ----------------------------------------------------------------- labels (names)


def enc_label(x: Any) -> Any:
    """A JSON form of a label that keeps its type (``1`` and ``"1"`` differ)."""
    import numpy as np

    if x is None or isinstance(x, str):
        return x
    if isinstance(x, bool | np.bool_):
        return {"b": bool(x)}
    if isinstance(x, int | np.integer):
        return {"i": int(x)}
    if isinstance(x, float | np.floating):
        v = float(x)
        return {"f": v.hex() if math.isfinite(v) else repr(v)}
    if isinstance(x, tuple):
        return {"t": [enc_label(v) for v in x]}
    raise TypeError(f"label {x!r} of type {type(x).__name__} has no exact columnar form")


def dec_label(x: Any) -> Any:
    if x is None or isinstance(x, str):
        return x
    if "b" in x:
        return x["b"]
    if "i" in x:
        return x["i"]
    if "f" in x:
        v = x["f"]
        return float(v) if v in ("nan", "inf", "-inf") else float.fromhex(v)
    return tuple(dec_label(v) for v in x["t"])


def _json_exact(value: Any) -> bool:
    """True when ``value`` survives JSON unchanged (no tuples, no non-str keys)."""
    if value is None or isinstance(value, str | bool):
        return True
    if isinstance(value, int | float):
        return type(value) in (int, float) and (
            not isinstance(value, float) or math.isfinite(value)
        )
    if type(value) is list:
        return all(_json_exact(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _json_exact(v) for k, v in value.items())
    return False


# --------------------------------------------------------------------- time zones


def enc_tz(tz: Any) -> Any:
    if isinstance(tz, _dt.timezone):
        offset = tz.utcoffset(None)
        return {"offset": offset.total_seconds()}
    mod = type(tz).__module__
    name = getattr(tz, "key", None) or getattr(tz, "zone", None)
    if isinstance(name, str) and (mod.startswith("zoneinfo") or mod.startswith("pytz")):
        return {"zone": name, "lib": mod.split(".")[0]}
    raise TypeError(f"time zone {tz!r} has no exact columnar form")


def dec_tz(spec: Mapping[str, Any]) -> Any:
    if "offset" in spec:
        seconds = spec["offset"]
        return _dt.UTC if seconds == 0 else _dt.timezone(_dt.timedelta(seconds=seconds))
    if spec["lib"] == "pytz":
        import pytz  # type: ignore[import-untyped,unused-ignore]

        return pytz.timezone(spec["zone"])
    import zoneinfo

    return zoneinfo.ZoneInfo(spec["zone"])


# ------------------------------------------------------------------------ encoding


def _utc_ticks(values: Any) -> Any:
    """The naive UTC ``datetime64`` array under a tz-aware DatetimeArray."""
    import numpy as np

    ticks = getattr(values, "_ndarray", None)  # a view; the public route copies twice
    if isinstance(ticks, np.ndarray) and ticks.dtype.kind == "M":
        return ticks
    return np.asarray(values.tz_convert("UTC").tz_localize(None))


class _Encoder:
    def __init__(self, writer: FrameWriter) -> None:
        self.w = writer

    def ndarray(self, values: Any) -> dict[str, Any]:
        import numpy as np

        if values.dtype == object:
            return self.objects(values)
        dtype = encode_dtype(values.dtype)
        arr, order = array_bytes(values)
        self.w.add(memoryview(arr.reshape(-1, order=order).view(np.uint8)), arr.dtype.itemsize)
        return {"k": "np", "dtype": dtype, "shape": list(arr.shape), "order": order}

    def objects(self, values: Any) -> dict[str, Any]:
        if values.ndim != 1:
            raise TypeError("object arrays of more than one dimension are pickled")
        if len(values) <= _SMALL_OBJECT:
            try:
                return {"k": "objjson", "values": [enc_label(v) for v in values.tolist()]}
            except TypeError:
                pass
        import pyarrow as pa

        try:
            arrow = pa.array(values, type=pa.large_string(), from_pandas=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise TypeError(f"an object column holds more than str/None ({exc})") from exc
        return {"k": "objstr", **self.arrow(arrow)}

    def arrow(self, arrow: Any) -> dict[str, Any]:
        import pyarrow as pa

        if isinstance(arrow, pa.ChunkedArray):
            arrow = arrow.combine_chunks()
        if arrow.type not in (pa.string(), pa.large_string()):
            raise TypeError(f"arrow type {arrow.type} is pickled")
        validity, offsets, data = arrow.buffers()
        offset_size = 8 if arrow.type == pa.large_string() else 4
        has = []
        for buf, typesize, keep in (
            (validity, 1, 0.8),
            (offsets, offset_size, 0.8),
            (data, 1, 0.5),
        ):
            has.append(buf is not None)
            if buf is not None:
                # Text compresses at ~0.5 GB/s with LZ4: worth it only when it halves.
                self.w.add(memoryview(buf), typesize, keep=keep)
        return {
            "type": str(arrow.type),
            "n": len(arrow),
            "nulls": arrow.null_count,
            "offset": arrow.offset,
            "has": has,
        }

    def array(self, values: Any) -> dict[str, Any]:
        """Any column's values: an ndarray or a supported ExtensionArray."""
        import numpy as np
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]

        if isinstance(values, np.ndarray):
            return self.ndarray(values)
        dtype = values.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            return {
                "k": "cat",
                "ordered": bool(dtype.ordered),
                "codes": self.ndarray(values.codes),
                "cats": self.index(dtype.categories),
            }
        if isinstance(dtype, pd.DatetimeTZDtype):
            return {
                "k": "dttz",
                "tz": enc_tz(dtype.tz),
                "unit": dtype.unit,
                "data": self.ndarray(_utc_ticks(values)),
            }
        if isinstance(dtype, pd.StringDtype):
            import pyarrow as pa

            na = "nan" if dtype.na_value is not pd.NA else "NA"
            spec = {"k": "str", "storage": dtype.storage, "na": na}
            return {**spec, **self.arrow(pa.array(values))}
        if isinstance(
            values, pd.arrays.IntegerArray | pd.arrays.FloatingArray | pd.arrays.BooleanArray
        ):
            return {
                "k": "masked",
                "dtype": str(dtype),
                "data": self.ndarray(values._data),
                "mask": self.ndarray(values._mask),
            }
        if isinstance(values, pd.arrays.DatetimeArray | pd.arrays.TimedeltaArray):
            return self.ndarray(np.asarray(values))
        raise TypeError(f"column dtype {dtype} has no exact columnar form here; it is pickled")

    def index(self, idx: Any) -> dict[str, Any]:
        import pandas as pd

        if type(idx) is pd.RangeIndex:
            return {
                "k": "range",
                "start": idx.start,
                "stop": idx.stop,
                "step": idx.step,
                "name": enc_label(idx.name),
            }
        if type(idx) is pd.MultiIndex:
            return {
                "k": "multi",
                "levels": [self.index(level) for level in idx.levels],
                "codes": [self.ndarray(c) for c in idx.codes],
                "names": [enc_label(n) for n in idx.names],
            }
        if type(idx) not in (
            pd.Index,
            pd.DatetimeIndex,
            pd.TimedeltaIndex,
            pd.CategoricalIndex,
        ):
            raise TypeError(f"index type {type(idx).__name__} is pickled")
        freq = getattr(idx, "freqstr", None)
        return {
            "k": "index",
            "values": self.array(idx._values),
            "name": enc_label(idx.name),
            "freq": freq,
        }


# ------------------------------------------------------------------------ decoding


class _Decoder:
    def __init__(self, frame: FrameReader) -> None:
        self.f = frame

    def ndarray(self, spec: Mapping[str, Any]) -> Any:
        import numpy as np

        if spec["k"] == "objjson":
            out = np.empty(len(spec["values"]), dtype=object)
            out[:] = [dec_label(v) for v in spec["values"]]
            return out
        if spec["k"] == "objstr":
            return self.arrow(spec).to_numpy(zero_copy_only=False)
        dtype = decode_dtype(spec["dtype"])
        shape, order = tuple(spec["shape"]), spec["order"]
        count = math.prod(shape)
        if self.f.raw_size() != count * dtype.itemsize:
            raise ValueError("a column's size does not match its dtype; the blob is corrupt")
        buf = self.f.read()
        flat = np.frombuffer(buf, dtype=dtype, count=count) if count else np.empty(0, dtype)
        return flat.reshape(shape, order=order)

    def arrow(self, spec: Mapping[str, Any]) -> Any:
        import pyarrow as pa

        buffers = [
            pa.py_buffer(self.f.read(writable=False)) if has else None for has in spec["has"]
        ]
        arrow_type = pa.large_string() if spec["type"] == "large_string" else pa.string()
        arr = pa.Array.from_buffers(
            arrow_type, spec["n"], buffers, null_count=spec["nulls"], offset=spec["offset"]
        )
        arr.validate()
        return arr

    def array(self, spec: Mapping[str, Any]) -> Any:
        import pandas as pd

        k = spec["k"]
        if k in ("np", "objjson", "objstr"):
            return self.ndarray(spec)
        if k == "cat":
            codes = self.ndarray(spec["codes"])
            cats = self.index(spec["cats"])
            dtype = pd.CategoricalDtype(cats, ordered=spec["ordered"])
            return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)
        if k == "dttz":
            naive = self.ndarray(spec["data"])
            dtype = pd.DatetimeTZDtype(unit=spec["unit"], tz=dec_tz(spec["tz"]))
            simple_new = getattr(pd.arrays.DatetimeArray, "_simple_new", None)
            if simple_new is not None:  # no copy; the public route below costs two
                return simple_new(naive, dtype=dtype)
            return pd.array(naive).tz_localize("UTC").tz_convert(dtype.tz)
        if k == "str":
            na = pd.NA if spec["na"] == "NA" else float("nan")
            dtype = pd.StringDtype(storage=spec["storage"], na_value=na)
            return dtype.construct_array_type()._from_sequence(self.arrow(spec), dtype=dtype)
        if k == "masked":
            dtype = pd.api.types.pandas_dtype(spec["dtype"])
            data = self.ndarray(spec["data"])
            mask = self.ndarray(spec["mask"])
            return dtype.construct_array_type()(data, mask, copy=False)
        raise ValueError(f"unknown column kind {k!r}; the blob is corrupt or from a newer version")

    def index(self, spec: Mapping[str, Any]) -> Any:
        import pandas as pd

        k = spec["k"]
        if k == "range":
            return pd.RangeIndex(
                spec["start"], spec["stop"], spec["step"], name=dec_label(spec["name"])
            )
        if k == "multi":
            levels = [self.index(s) for s in spec["levels"]]
            codes = [self.ndarray(s) for s in spec["codes"]]
            names = [dec_label(n) for n in spec["names"]]
            return pd.MultiIndex(levels=levels, codes=codes, names=names, verify_integrity=False)
        values = self.array(spec["values"])
        name = dec_label(spec["name"])
        if spec.get("freq"):
            cls = pd.DatetimeIndex if values.dtype.kind == "M" else pd.TimedeltaIndex
            return cls(values, freq=spec["freq"], name=name)
        return pd.Index(values, dtype=values.dtype, name=name, copy=False)


# ------------------------------------------------------------------------- handler


class PandasHandler(TypeHandler):
    """``pandas.DataFrame`` and ``pandas.Series`` (exact types; subclasses are pickled).

    ``safe = False``: Arrow buffers are trusted when rebuilt, so the store
    checks the blob's hash before :meth:`load` sees it.
    """

    name: ClassVar[str] = "pandas"
    priority: ClassVar[int] = 0
    safe: ClassVar[bool] = False

    @classmethod
    def can_handle(cls, obj: object) -> bool:
        t = type(obj)
        top = t.__module__.partition(".")[0]
        return top == "pandas" and t.__name__ in ("DataFrame", "Series")

    def dump(self, obj: Any, codec: Codec) -> Serialized:
        import pandas as pd

        if type(obj) not in (pd.DataFrame, pd.Series):
            raise TypeError(f"{type(obj).__qualname__} is a pandas subclass; it is pickled")
        if not _json_exact(obj.attrs):
            raise TypeError("attrs that JSON cannot hold exactly are pickled with the frame")
        enc = _Encoder(FrameWriter(plan_for(codec)))
        meta: dict[str, Any] = {
            "attrs": obj.attrs,
            "dup": bool(obj.flags.allows_duplicate_labels),
            "index": enc.index(obj.index),
        }
        if isinstance(obj, pd.DataFrame):
            meta["type"] = "DataFrame"
            meta["columns"] = enc.index(obj.columns)
            meta["cols"] = [enc.array(obj.iloc[:, i]._values) for i in range(obj.shape[1])]
            info = {"type": "DataFrame", "shape": list(obj.shape)}
        else:
            meta["type"] = "Series"
            meta["name"] = enc_label(obj.name)
            meta["values"] = enc.array(obj._values)
            info = {"type": "Series", "shape": [len(obj)]}
        chunks, label = enc.w.finish(meta)
        data_type = f"pandas.{meta['type']}"
        return Serialized(chunks=chunks, codec=label, info=info, data_type=data_type)

    def load(self, reader: BinaryIO, info: Mapping[str, Any], codec: Codec) -> Any:
        import pandas as pd

        dec = _Decoder(FrameReader(reader, codec))
        meta = dec.f.meta
        index = dec.index(meta["index"])
        if meta["type"] == "DataFrame":
            columns = dec.index(meta["columns"])
            arrays = [dec.array(spec) for spec in meta["cols"]]
            out = pd.DataFrame(dict(enumerate(arrays)), index=index, copy=False)
            out.columns = columns
        else:
            values = dec.array(meta["values"])
            out = pd.Series(values, index=index, name=dec_label(meta["name"]), copy=False)
        out.attrs = meta["attrs"]
        if not meta["dup"]:
            out = out.set_flags(allows_duplicate_labels=False)
        return out
