"""Keys of numpy arrays, pandas and polars objects: their buffers' digests plus
dtype, shape, index and columns. numpy, pandas and polars are imported on use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import xxhash

from cacheness.keys._wire import _Q, _blob

if TYPE_CHECKING:
    from cacheness.keys._encoder import _Encoder


def _buffer_digest(arr: Any) -> bytes:
    """XXH3-128 over a numpy array's memory (C order, little-endian), without copying."""
    import numpy as np

    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    flat = arr.reshape(-1).view(np.uint8)
    return xxhash.xxh3_128(flat).digest()


def _dtype_name(dtype: Any) -> str:
    s = str(dtype.str)
    if dtype.fields is not None or dtype.subdtype is not None:
        s += repr(dtype.descr)
    return s.replace(">", "<") if s.startswith(">") else s


def _numpy(v: Any, enc: _Encoder) -> bytes:
    import numpy as np

    if isinstance(v, np.ndarray):
        head = _blob(b"a", _dtype_name(v.dtype).encode()) + enc.encode(tuple(v.shape))
        if v.dtype.hasobject:
            return head + enc.encode(v.tolist())
        return head + _blob(b"h", _buffer_digest(v))
    if isinstance(v, np.generic):
        head = _blob(b"g", _dtype_name(v.dtype).encode())
        if v.dtype.hasobject:
            return head + enc.encode(v.item())
        return head + _blob(b"h", _buffer_digest(np.asarray(v)))
    if isinstance(v, np.dtype):
        return _blob(b"q", _dtype_name(v).encode())
    return enc._reduce(v)


def _column(values: Any, dtype: Any, enc: _Encoder) -> bytes:
    """One pandas column (or index level): its buffer when numpy-backed, else its values."""
    import numpy as np

    head = _blob(b"k", str(dtype).encode())
    if isinstance(dtype, np.dtype) and not dtype.hasobject:
        return head + _blob(b"h", _buffer_digest(np.asarray(values)))
    cat = getattr(values, "categories", None)
    codes = getattr(values, "codes", None)
    if cat is not None and codes is not None:
        return head + _index(cat, enc) + _blob(b"h", _buffer_digest(np.asarray(codes)))
    return head + enc.encode(list(values.tolist() if hasattr(values, "tolist") else values))


def _index(idx: Any, enc: _Encoder) -> bytes:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    names = enc.encode(tuple(idx.names))
    if isinstance(idx, pd.RangeIndex):
        return b"I" + names + enc.encode((idx.start, idx.stop, idx.step))
    if isinstance(idx, pd.MultiIndex):
        levels = b"".join(
            _column(idx.get_level_values(i).array, idx.levels[i].dtype, enc)
            for i in range(idx.nlevels)
        )
        return b"J" + names + _Q.pack(idx.nlevels) + levels
    return (
        b"K" + _blob(b"n", type(idx).__name__.encode()) + names + _column(idx.array, idx.dtype, enc)
    )


def _pandas(v: Any, enc: _Encoder) -> bytes:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    if isinstance(v, pd.DataFrame):
        cols = [_column(v.iloc[:, i].array, v.dtypes.iloc[i], enc) for i in range(v.shape[1])]
        return (
            b"P"
            + _index(v.columns, enc)
            + _index(v.index, enc)
            + _Q.pack(len(cols))
            + b"".join(cols)
        )
    if isinstance(v, pd.Series):
        return b"Q" + enc.encode(v.name) + _index(v.index, enc) + _column(v.array, v.dtype, enc)
    if isinstance(v, pd.Index):
        return _index(v, enc)
    if isinstance(v, pd.Timestamp):
        return _blob(b"W", v.isoformat().encode()) + _blob(b"w", str(v.tz).encode())
    if isinstance(v, pd.Timedelta):
        return _blob(b"D", f"Timedelta:{v.value}".encode())
    if v is pd.NaT:
        return b"O"
    return enc._reduce(v)


def _polars(v: Any, enc: _Encoder) -> bytes:
    import polars as pl

    def series(s: Any) -> bytes:
        head = _blob(b"n", s.name.encode()) + _blob(b"k", str(s.dtype).encode())
        if s.dtype.is_numeric() and s.null_count() == 0:
            return head + _blob(b"h", _buffer_digest(s.to_numpy()))
        return head + enc.encode(s.to_list())

    if isinstance(v, pl.DataFrame):
        return b"L" + _Q.pack(v.width) + b"".join(series(s) for s in v.get_columns())
    if isinstance(v, pl.Series):
        return b"V" + series(v)
    return enc._reduce(v)
