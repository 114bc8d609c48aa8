"""Fetchers: ``sql_fetcher`` for a remote database, and how a fetcher's signature is read."""

from __future__ import annotations

import collections.abc as cabc
import datetime as dt
import inspect
import logging
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import pandas as pd  # type: ignore[import-untyped, unused-ignore]
import sqlalchemy as sa

from cacheness.storage.errors import CacheBackendError, CacheConfigError

__all__ = ["SqlFetcher", "accepts_list", "make_engine", "sql_fetcher"]

logger = logging.getLogger(__name__)

_LIST_ORIGINS = (list, tuple, set, frozenset, cabc.Sequence, cabc.Iterable, cabc.Collection)
_LIST_NAMES = re.compile(
    r"^\s*(list|List|tuple|Tuple|set|Set|Sequence|Iterable|Collection|"
    r"typing\.\w+|collections\.abc\.\w+)\s*\["
)
_IN_PARAM = re.compile(r"\bIN\s*:(\w+)", re.IGNORECASE)


def make_engine(url: str, engine_kwargs: Mapping[str, Any] | None = None) -> sa.Engine:
    """An engine whose sessions agree that naive times are UTC.

    PostgreSQL compares a ``date`` column with a timestamptz parameter in the
    session's time zone; pinning it to UTC makes ``BETWEEN :start_date AND
    :end_date`` mean the same whatever the server's default is.
    """
    kwargs = dict(engine_kwargs or {})
    try:
        engine = sa.create_engine(url, **kwargs)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise CacheConfigError(
            f"cannot use database URL {_redact(url)!r}: {exc}; pass a SQLAlchemy URL such as "
            "'sqlite:///cache.db' or 'postgresql+psycopg://user@host/db'"
        ) from exc
    except ImportError as exc:
        raise CacheConfigError(f"the driver for {_redact(url)!r} is not installed: {exc}") from exc
    if engine.dialect.name == "postgresql":

        @sa.event.listens_for(engine, "connect")
        def _utc_session(dbapi_conn: Any, _record: Any) -> None:
            autocommit = dbapi_conn.autocommit
            dbapi_conn.autocommit = True
            cur = dbapi_conn.cursor()
            try:
                cur.execute("SET TIME ZONE 'UTC'")
            finally:
                cur.close()
            dbapi_conn.autocommit = autocommit

    return engine


def _redact(url: str) -> str:
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _annotation_is_list(annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty:
        return False
    if isinstance(annotation, str):
        parts = [p.strip() for p in annotation.split("|")]
        return any(_LIST_NAMES.match(p) or p in ("list", "tuple", "set") for p in parts)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_annotation_is_list(a) for a in typing.get_args(annotation))
    target = origin or annotation
    return isinstance(target, type) and issubclass(target, _LIST_ORIGINS) and target is not str


def accepts_list(fetcher: Callable[..., Any], names: Iterable[str]) -> bool:
    """Whether ``fetcher`` declares that one of ``names`` takes a list (batch fetching)."""
    names = list(names)
    declared = getattr(fetcher, "list_params", None)
    if declared is not None:
        return any(n in declared for n in names)
    try:
        sig = inspect.signature(fetcher)
    except (TypeError, ValueError):
        return False
    hints: dict[str, Any] = {}
    try:
        hints = typing.get_type_hints(fetcher)
    except (NameError, TypeError, AttributeError):
        hints = {}
    for name in names:
        param = sig.parameters.get(name)
        if param is None:
            continue
        if _annotation_is_list(hints.get(name, param.annotation)):
            return True
    return False


def _bindable(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, dt.date | dt.datetime | str | int | float | bool) or value is None:
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


class SqlFetcher:
    """A data fetcher that runs one parameterised query on a (remote) database.

    Call it with keyword arguments; each becomes a bound parameter of the
    query (never text substitution). List values bind to ``IN :name``
    parameters, which makes the fetcher batch-capable for lookups.
    """

    def __init__(
        self,
        url_or_engine: str | sa.Engine,
        query: str,
        *,
        list_params: Iterable[str] = (),
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(query, str) or not query.strip():
            raise CacheConfigError("sql_fetcher needs a non-empty SQL query string")
        self.query = query
        self.list_params = frozenset(list_params) | frozenset(_IN_PARAM.findall(query))
        self._text = sa.text(query)
        self._owns_engine = not isinstance(url_or_engine, sa.Engine)
        if isinstance(url_or_engine, sa.Engine):
            self._engine: sa.Engine | None = url_or_engine
            self._url: str | None = None
        else:
            self._engine = None
            self._url = str(url_or_engine)
            self._engine_kwargs = dict(engine_kwargs or {})
            sa.make_url(self._url)  # fail early on a malformed URL, connect lazily
        self._params = set(self._text.compile().params)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            assert self._url is not None
            self._engine = make_engine(self._url, self._engine_kwargs)
        return self._engine

    def __call__(self, **params: Any) -> pd.DataFrame:
        missing = self._params - params.keys()
        if missing:
            raise CacheConfigError(
                f"query needs parameter(s) {sorted(missing)} that the call did not give; "
                f"it got {sorted(params)}"
            )
        stmt = self._text
        expanding = [
            name
            for name, value in params.items()
            if name in self._params and isinstance(value, list | tuple | set | frozenset)
        ]
        if expanding:
            stmt = stmt.bindparams(*(sa.bindparam(n, expanding=True) for n in expanding))
        bound = {
            name: ([_bindable(v) for v in value] if name in expanding else _bindable(value))
            for name, value in params.items()
            if name in self._params
        }
        try:
            with self.engine.connect() as conn:
                result = conn.execute(stmt, bound)
                columns = list(result.keys())
                rows = result.fetchall()
        except sa.exc.SQLAlchemyError as exc:
            raise CacheBackendError(
                f"source query failed: {exc.__class__.__name__}: {getattr(exc, 'orig', exc)}; "
                "check the query and that the source database is reachable",
                backend=self.engine.dialect.name,
            ) from exc
        logger.debug("source query returned %d row(s)", len(rows))
        return pd.DataFrame.from_records([tuple(r) for r in rows], columns=columns)

    def close(self) -> None:
        """Dispose the engine this fetcher created (an engine passed in is left alone)."""
        if self._owns_engine and self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> SqlFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = _redact(self._url) if self._url else repr(self._engine)
        return f"SqlFetcher({where!r}, {self.query!r})"


def sql_fetcher(
    url_or_engine: str | sa.Engine,
    query: str,
    *,
    list_params: Iterable[str] = (),
    engine_kwargs: Mapping[str, Any] | None = None,
) -> SqlFetcher:
    """A fetcher that pulls rows from a database with bound parameters.

    ``query`` uses ``:name`` placeholders, for instance ``"SELECT symbol, date,
    price FROM prices WHERE symbol = :symbol AND date BETWEEN :start_date AND
    :end_date"``. Parameters named in ``IN :name`` (or listed in
    ``list_params``) accept lists, so a lookup cache fetches every missing id
    in one query. The engine is created on first use; ``close()`` disposes it.
    """
    return SqlFetcher(url_or_engine, query, list_params=list_params, engine_kwargs=engine_kwargs)
