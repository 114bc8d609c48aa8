"""The cache table: declared columns, their pandas dtypes, and the two conversions.

``frame_to_rows`` is the schema guard: a fetched frame must have exactly the
table's columns, and every value must convert to its column's declared type,
or :class:`SchemaMismatchError` is raised before anything is written.
``rows_to_frame`` turns selected rows back into a frame with one fixed dtype
per declared type, whatever the backend returned.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd  # type: ignore[import-untyped, unused-ignore]
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeEngine

from cacheness.sql._errors import SchemaMismatchError
from cacheness.sql._time import series_to_us, series_to_utc, to_utc, us_to_series
from cacheness.storage.errors import CacheConfigError, CacheKeyError

__all__ = ["ColumnSpec", "Kind", "TableSchema", "as_type", "build_specs", "kind_of"]

#: How a column's values are converted; ``instant`` is the time column of a
#: time series (a UTC instant, stored natively or as integer microseconds).
Kind = Literal["instant", "int", "float", "str", "bool", "datetime", "date", "other"]

_UTC = dt.UTC


def as_type(name: str, value: Any) -> TypeEngine[Any]:
    """A declared column type: a SQLAlchemy type class or instance."""
    if isinstance(value, TypeEngine):
        return value
    if isinstance(value, type) and issubclass(value, TypeEngine):
        return value()
    raise CacheConfigError(
        f"column {name!r} was given {value!r}, which is not a SQLAlchemy column type; "
        "pass e.g. Float, Integer or String(20) (from sqlalchemy)"
    )


def kind_of(type_: TypeEngine[Any]) -> Kind:
    if isinstance(type_, sa.Boolean):
        return "bool"
    if isinstance(type_, sa.Integer):
        return "int"
    if isinstance(type_, sa.Float | sa.Numeric):  # SQLAlchemy 2.1: Float is no Numeric
        return "float"
    if isinstance(type_, sa.String):
        return "str"
    if isinstance(type_, sa.DateTime):
        return "datetime"
    if isinstance(type_, sa.Date):
        return "date"
    return "other"


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: TypeEngine[Any]
    kind: Kind
    primary_key: bool

    @property
    def nullable(self) -> bool:
        return not self.primary_key


def _pylist(values: pd.Series) -> list[Any]:
    """Python objects with every missing value as None (what every DBAPI binds as NULL)."""
    obj = values.astype(object)
    out: list[Any] = obj.where(values.notna(), None).tolist()
    return out


class TableSchema:
    """Columns of one cache table and how values cross between pandas and the database."""

    def __init__(
        self,
        name: str,
        columns: Sequence[ColumnSpec],
        *,
        native_instants: bool,
    ) -> None:
        self.name = name
        self.columns = list(columns)
        self.by_name = {c.name: c for c in self.columns}
        self.names = [c.name for c in self.columns]
        self.primary_key = [c.name for c in self.columns if c.primary_key]
        # PostgreSQL has a real timestamptz; elsewhere the instant is stored as
        # int64 microseconds so it sorts, indexes and converts without parsing.
        self.native_instants = native_instants

    # -- DDL ---------------------------------------------------------------

    def physical_type(self, spec: ColumnSpec) -> TypeEngine[Any]:
        if spec.kind == "instant":
            if self.native_instants:
                return postgresql.TIMESTAMP(timezone=True)
            return sa.BigInteger()
        return spec.type

    def build_table(self, metadata: sa.MetaData) -> sa.Table:
        cols = [
            sa.Column(
                c.name,
                self.physical_type(c),
                primary_key=c.primary_key,
                nullable=c.nullable,
                autoincrement=False,
            )
            for c in self.columns
        ]
        # WITHOUT ROWID clusters SQLite rows by the primary key, so a range
        # read for one key is one contiguous b-tree scan.
        return sa.Table(self.name, metadata, *cols, sqlite_with_rowid=False)

    # -- key values ----------------------------------------------------------

    def bind_key(self, column: str, value: Any) -> Any:
        """A key value from the caller, in the form the database compares."""
        spec = self.by_name[column]
        if (
            value is None
            or value is pd.NaT
            or value is pd.NA
            or (isinstance(value, float | np.floating) and np.isnan(value))
        ):
            # Key columns are NOT NULL: str(None) would ask the source for "None".
            raise CacheKeyError(f"{column}={value!r}: a key column needs a value", key=column)
        try:
            if spec.kind == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError("not a whole number")
                return int(value)
            if spec.kind == "float":
                return float(value)
            if spec.kind == "str":
                return str(value)
            if spec.kind == "bool":
                return bool(value)
            if spec.kind == "date":
                return to_utc(value, name=column).date()
            if spec.kind == "datetime":
                ts = to_utc(value, name=column).to_pydatetime()
                return ts if getattr(spec.type, "timezone", False) else ts.replace(tzinfo=None)
        except (TypeError, ValueError) as exc:
            raise CacheKeyError(
                f"{column}={value!r} does not fit the column's declared type {spec.type!r}"
            ) from exc
        return value

    @staticmethod
    def label(values: Sequence[Any]) -> str:
        """The ledger's text key for one key tuple (stable across processes)."""
        return json.dumps(list(values), separators=(",", ":"), default=str)

    # -- instants -----------------------------------------------------------

    def bind_instant(self, us: int) -> Any:
        if self.native_instants:
            return dt.datetime(1970, 1, 1, tzinfo=_UTC) + dt.timedelta(microseconds=us)
        return us

    # -- frame -> rows (the schema guard) ----------------------------------

    def frame_to_rows(self, frame: Any) -> list[dict[str, Any]]:
        if not isinstance(frame, pd.DataFrame):
            raise SchemaMismatchError(
                f"data_fetcher returned {type(frame).__name__}, not a pandas DataFrame, "
                f"for table {self.name!r}; return a DataFrame with columns {self.names}",
                table=self.name,
            )
        if len(frame.columns) == 0 and len(frame) == 0:
            return []
        wanted = set(self.names)
        present = {str(c) for c in frame.columns}
        index_names = [n for n in frame.index.names if n is not None]
        if wanted - present and set(index_names) & (wanted - present):
            frame = frame.reset_index()
            present = {str(c) for c in frame.columns}
        missing = [n for n in self.names if n not in present]
        extra = sorted(present - wanted)
        if missing or extra or len(present) != len(frame.columns):
            raise SchemaMismatchError(
                f"fetched frame for table {self.name!r} does not match its columns: "
                f"missing {missing}, unexpected {extra}; make data_fetcher return exactly "
                f"{self.names} (nothing was stored)",
                table=self.name,
                missing=missing,
                extra=extra,
            )
        if len(frame) == 0:
            return []
        converted: dict[str, list[Any]] = {}
        for spec in self.columns:
            column = frame[spec.name]
            try:
                values = self._to_db(spec, column)
            except (TypeError, ValueError, OverflowError) as exc:
                raise SchemaMismatchError(
                    f"column {spec.name!r} of the fetched frame for table {self.name!r} "
                    f"cannot be stored as {spec.type!r}: {exc}; fix data_fetcher's output "
                    "(nothing was stored)",
                    table=self.name,
                    column=spec.name,
                ) from exc
            if spec.primary_key and any(v is None for v in values):
                raise SchemaMismatchError(
                    f"key column {spec.name!r} of the fetched frame for table {self.name!r} "
                    "has missing values; every row needs its key (nothing was stored)",
                    table=self.name,
                    column=spec.name,
                )
            converted[spec.name] = values
        pk_idx = [self.names.index(n) for n in self.primary_key]
        unique: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for row in zip(*(converted[n] for n in self.names), strict=True):
            # A source may repeat a row; the last one wins, as an upsert would.
            unique[tuple(row[i] for i in pk_idx)] = row
        names = self.names
        return [dict(zip(names, row, strict=True)) for row in unique.values()]

    def _to_db(self, spec: ColumnSpec, column: pd.Series) -> list[Any]:
        kind = spec.kind
        if kind == "instant":
            us = series_to_us(column)
            if self.native_instants:
                return _pylist(us_to_series(us).dt.to_pydatetime())
            plain: list[Any] = us.tolist()
            return plain
        if kind == "int":
            num = pd.to_numeric(column)
            if num.dtype.kind == "f":
                finite = num.dropna()
                if not (finite == finite.round()).all():
                    raise ValueError("has fractional values")
            return _pylist(num.astype("Int64"))
        if kind == "float":
            return _pylist(pd.to_numeric(column).astype("float64"))
        if kind == "str":
            return [None if v is None else str(v) for v in _pylist(column)]
        if kind == "bool":
            return _pylist(column.astype("boolean"))
        if kind == "datetime":
            utc = series_to_utc(column)
            if getattr(spec.type, "timezone", False):
                return _pylist(utc.dt.to_pydatetime())
            return _pylist(utc.dt.tz_convert(None).dt.to_pydatetime())
        if kind == "date":
            return _pylist(pd.to_datetime(column).dt.date)
        return _pylist(column)

    # -- rows -> frame -------------------------------------------------------

    def rows_to_frame(self, rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
        cols: list[Sequence[Any]] = (
            list(zip(*rows, strict=True)) if rows else [() for _ in self.columns]
        )
        data = {
            spec.name: self._from_db(spec, vals)
            for spec, vals in zip(self.columns, cols, strict=True)
        }
        return pd.DataFrame(data, copy=False)

    def _from_db(self, spec: ColumnSpec, values: Sequence[Any]) -> Any:
        kind = spec.kind
        if kind == "instant":
            if self.native_instants:
                return _utc_series(values)
            return us_to_series(values).array
        if kind == "int":
            if not spec.nullable:
                return np.asarray(values, dtype="int64")
            try:
                plain = np.asarray(values, dtype="int64")
            except TypeError:  # NULLs present: take the slower, masked route
                return pd.array(list(values), dtype="Int64")
            return pd.array(plain, dtype="Int64")
        if kind == "float":
            # numpy turns None into NaN and Decimal into float by itself.
            return np.asarray(values, dtype="float64")
        if kind == "str":
            return pd.array(list(values), dtype="str")
        if kind == "bool":
            if spec.nullable:
                return pd.array(list(values), dtype="boolean")
            return np.asarray(values, dtype=bool)
        if kind == "datetime":
            return _utc_series(values)
        if kind == "date":
            return pd.Series(pd.to_datetime(list(values))).astype("datetime64[s]").array
        return pd.array(list(values), dtype=object)

    def empty_frame(self) -> pd.DataFrame:
        return self.rows_to_frame([])


def _utc_series(values: Sequence[Any]) -> Any:
    return pd.Series(pd.to_datetime(list(values), utc=True)).dt.as_unit("us").array


def build_specs(
    *,
    table_name: str,
    key_names: Sequence[str],
    time_column: str | None,
    sequence: bool,
    declared: Mapping[str, Any],
) -> list[ColumnSpec]:
    """Columns in table order: keys, then the time column, then the declared others."""
    specs: list[ColumnSpec] = []
    for name in key_names:
        type_ = as_type(name, declared[name]) if name in declared else sa.String(255)
        specs.append(ColumnSpec(name, type_, kind_of(type_), True))
    if time_column is not None:
        if sequence:
            type_ = sa.BigInteger()
            specs.append(ColumnSpec(time_column, type_, "int", True))
        else:
            if time_column in declared:
                given = as_type(time_column, declared[time_column])
                if kind_of(given) not in ("datetime", "date"):
                    raise CacheConfigError(
                        f"time column {time_column!r} of table {table_name!r} was declared "
                        f"{given!r}; a time column holds dates or datetimes (leave it "
                        "undeclared, or use ordered_increment= for integer sequences)"
                    )
            specs.append(ColumnSpec(time_column, sa.DateTime(timezone=True), "instant", True))
    taken = {s.name for s in specs}
    for name, value in declared.items():
        if name in taken:
            continue
        type_ = as_type(name, value)
        specs.append(ColumnSpec(name, type_, kind_of(type_), False))
    return specs
