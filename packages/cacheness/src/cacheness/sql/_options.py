"""A ``SqlCache``'s keying options checked and resolved, and the builders' column keywords.

``_layout`` turns ``time_column``/``primary_keys`` and the increments into
the mode, the key columns, the grid step and the names of the fetcher's
range parameters; ``_merge_columns`` turns the builders' extra keywords
into column types.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal, NamedTuple

import pandas as pd  # type: ignore[import-untyped, unused-ignore]

from cacheness.sql._time import increment_to_us
from cacheness.storage.errors import CacheConfigError

__all__: list[str] = []


class _Layout(NamedTuple):
    mode: Literal["range", "lookup"]
    key_columns: list[str]
    step: int
    start_name: str
    end_name: str


def _layout(
    *,
    key_columns: Sequence[str],
    time_column: str | None,
    time_increment: timedelta | pd.Timedelta | str | None,
    ordered_increment: int | None,
    primary_keys: Sequence[str] | None,
) -> _Layout:
    if time_column is not None:
        if primary_keys is not None:
            raise CacheConfigError(
                "give either time_column= (a time series) or primary_keys= (a lookup "
                "table), not both"
            )
        keys = list(key_columns)
        if time_increment is not None and ordered_increment is not None:
            raise CacheConfigError(
                "time_increment= is for time columns and ordered_increment= for integer "
                "sequences; give one of them"
            )
        if ordered_increment is not None:
            if (
                isinstance(ordered_increment, bool)
                or not isinstance(ordered_increment, int)
                or ordered_increment < 1
            ):
                raise CacheConfigError(
                    f"ordered_increment={ordered_increment!r} must be a positive integer"
                )
            step = ordered_increment
            start_name, end_name = "start", "end"
        else:
            # Without an increment the grid is the microsecond: coverage is
            # then continuous and gaps start just after what is cached.
            step = 1 if time_increment is None else increment_to_us(time_increment)
            start_name, end_name = "start_date", "end_date"
        reserved = {start_name, end_name, time_column}
        clash = reserved & set(keys)
        if clash:
            raise CacheConfigError(
                f"key_columns {sorted(clash)} clash with the time parameters "
                f"{sorted(reserved)}; rename the column"
            )
        layout = _Layout("range", keys, step, start_name, end_name)
    else:
        if not primary_keys:
            raise CacheConfigError(
                "a SqlCache needs time_column= (time series, see for_timeseries) or "
                "primary_keys= (lookup table, see for_lookup_table)"
            )
        if key_columns:
            raise CacheConfigError(
                "key_columns= belongs to time series; a lookup table names its ids "
                "with primary_keys="
            )
        layout = _Layout("lookup", list(primary_keys), 1, "", "")
    key_names = layout.key_columns
    if len(set(key_names)) != len(key_names) or not all(
        isinstance(n, str) and n for n in key_names
    ):
        raise CacheConfigError(f"key column names {key_names!r} must be distinct strings")
    return layout


_BUILDER_OPTIONS = (
    "data_fetcher",
    "key_columns",
    "time_column",
    "time_increment",
    "ordered_increment",
    "ttl_seconds",
    "open_ttl_seconds",
    "gap_detector",
    "max_fetches",
    "columns",
    "primary_keys",
    "batch_fetch",
    "lease_seconds",
    "engine_kwargs",
    "clock",
)


def _merge_columns(
    builder: Callable[..., Any], columns: Mapping[str, Any] | None, column_types: Mapping[str, Any]
) -> dict[str, Any]:
    """Column types from ``columns=`` and keywords; a non-type keyword is most likely a typo."""
    from sqlalchemy.types import TypeEngine

    merged = dict(columns or {})
    for name, value in column_types.items():
        is_type = isinstance(value, TypeEngine) or (
            isinstance(value, type) and issubclass(value, TypeEngine)
        )
        if not is_type:
            close = difflib.get_close_matches(name, _BUILDER_OPTIONS, n=1)
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise CacheConfigError(
                f"{builder.__name__}() got {name}={value!r}: keywords other than its options "
                f"declare columns and need a SQLAlchemy type (e.g. {name}=Float){hint}"
            )
        if name in merged:
            raise CacheConfigError(f"column {name!r} is declared twice (columns= and keyword)")
        merged[name] = value
    return merged
