"""Errors specific to the SQL pull-through cache."""

from __future__ import annotations

from collections.abc import Sequence

from cacheness.storage.errors import CacheError

__all__ = ["SchemaMismatchError"]


class SchemaMismatchError(CacheError):
    """A fetched frame does not fit the cache table; nothing was stored.

    ``missing`` and ``extra`` name the columns the frame lacks or has beyond
    the table; ``column`` names a column whose values could not be converted
    to its declared type.
    """

    def __init__(
        self,
        message: str,
        *,
        table: str,
        missing: Sequence[str] = (),
        extra: Sequence[str] = (),
        column: str | None = None,
    ) -> None:
        super().__init__(message, key=table)
        self.table = table
        self.missing = list(missing)
        self.extra = list(extra)
        self.column = column
