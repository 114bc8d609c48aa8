"""The custom-metadata part of the cache's API (``query_custom``, ``session``, ...).

Kept out of ``_cache`` so the plain get/put path neither imports SQLAlchemy
nor pays for this feature: ``put`` without ``custom_metadata`` costs one
``is None`` test here. Everything SQL lives in ``_custom_models`` and loads
on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cacheness.storage.errors import CacheConfigError

if TYPE_CHECKING:
    from sqlalchemy.orm import Query, Session

    from cacheness._config import CacheConfig
    from cacheness._custom_models import CustomMetadataBase, CustomStore
    from cacheness.policy import CacheIndex, IndexRow, Limits, Pending, PutResult

__all__ = ["CustomMetadataMixin", "meta_matches"]

# Top-level fields of an entry's metadata that query_meta matches besides key parameters
# and user metadata.
BUILTIN_FIELDS = (
    "cache_key",
    "data_type",
    "handler",
    "codec",
    "size",
    "content_hash",
    "description",
)

_Prepared = list[tuple[str, "CustomMetadataBase"]]


class CustomMetadataMixin:
    """Methods of :class:`~cacheness.UnifiedCache` for custom metadata and metadata queries."""

    _custom: CustomStore | None = None

    if TYPE_CHECKING:
        config: CacheConfig
        _index: CacheIndex
        _limits: Limits
        _clock: Callable[[], float]

        _take_pending: Callable[[], Pending]

        def _check_open(self) -> None: ...
        def _live_row(self, key: str) -> IndexRow | None: ...
        def _key(
            self, cache_key: str | None, params: dict[str, Any], on: Mapping[str, Any] | None
        ) -> str: ...
        def _entries(
            self, prefix: str | None, filters: Mapping[str, Any]
        ) -> list[dict[str, Any]]: ...

    # ------------------------------------------------------------ plumbing

    def _custom_store(self) -> CustomStore:
        self._check_open()
        store = self._custom
        if store is None:
            from cacheness._custom_models import CustomStore

            store = self._custom = CustomStore(self._index, self.config.metadata_backend)
        store.check_process()
        return store

    def _prepare_custom_metadata(self, custom_metadata: Any) -> _Prepared | None:
        """Check ``put``'s ``custom_metadata`` and create the tables it needs, before
        anything is stored; None when there is none."""
        if custom_metadata is None:
            return None
        if not isinstance(custom_metadata, Mapping):
            raise CacheConfigError(
                "custom_metadata takes a dict of registered name -> model instance, "
                f"not {type(custom_metadata).__name__}"
            )
        store = self._custom_store()
        from cacheness._custom_models import check_instance, model_for

        items: _Prepared = []
        for name, obj in custom_metadata.items():
            model = model_for(name)
            check_instance(name, model, obj)
            items.append((name, obj))
        for name, obj in items:
            store.ensure(name, type(obj))
        return items

    def _put_with_custom(self, row: IndexRow, items: _Prepared) -> PutResult:
        """The index put of ``row`` with its custom rows in the same transaction."""
        writer = self._custom_store().writer(row.key, items)
        index: Any = self._index  # SqliteIndex and SqlAlchemyIndex take extra=
        result: PutResult = index.put(row, self._limits, self._take_pending, extra=writer)
        return result

    def _close_custom_metadata(self) -> None:
        store, self._custom = self._custom, None
        if store is not None:
            store.close()

    # -------------------------------------------------------------- public

    def query_custom(self, name: str, filters: Mapping[str, Any] | None = None) -> list[Any]:
        """Rows of the custom metadata ``name`` whose columns equal ``filters`` (all rows
        when None), for unexpired entries, as detached model instances. The session is
        closed before this returns."""
        from sqlalchemy.orm import Session

        from cacheness._custom_models import check_filters, model_for

        model = model_for(name)
        store = self._custom_store()
        store.ensure(name, model)
        filters = {} if filters is None else filters
        check_filters(name, model, filters)
        with Session(store.engine, expire_on_commit=False) as session:
            query = store.live_query(session, model, self._clock())
            for col, value in filters.items():
                query = query.filter(getattr(model, col) == value)
            pk = model.__table__.primary_key.columns  # type: ignore[attr-defined]
            rows = list(query.order_by(*pk).all())
            session.expunge_all()
        return rows

    @contextmanager
    def query_custom_session(self, name: str) -> Iterator[Query[Any]]:
        """A query over the rows of ``name`` for unexpired entries; its session is
        closed when the block ends, also on an exception."""
        from sqlalchemy.orm import Session

        from cacheness._custom_models import model_for

        model = model_for(name)
        store = self._custom_store()
        store.ensure(name, model)
        session = Session(store.engine, expire_on_commit=False)
        try:
            yield store.live_query(session, model, self._clock())
        finally:
            session.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A plain SQLAlchemy session on the database of the custom metadata (the
        tables of every registered model exist); closed, uncommitted changes rolled
        back, when the block ends — call ``commit()`` yourself to keep changes."""
        from sqlalchemy.orm import Session

        from cacheness._custom_models import registered_models

        store = self._custom_store()
        # The session may use any registered model: their tables must exist.
        for name, model in registered_models().items():
            store.ensure(name, model)
        session = Session(store.engine, expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()

    def get_custom_metadata(
        self,
        /,
        *,
        cache_key: str | None = None,
        on: Mapping[str, Any] | None = None,
        **key_params: Any,
    ) -> dict[str, Any] | None:
        """``{name: instance}`` of the custom metadata stored with this entry (every
        registered name that has a row), or None when there is no unexpired entry."""
        from sqlalchemy.orm import Session

        from cacheness._custom_models import LINK_COLUMN, registered_models

        key = self._key(cache_key, key_params, on)
        store = self._custom_store()
        if self._live_row(key) is None:
            return None
        found: dict[str, Any] = {}
        models = registered_models()
        for name, model in models.items():
            store.ensure(name, model)
        with Session(store.engine, expire_on_commit=False) as session:
            for name, model in sorted(models.items()):
                pk = model.__table__.primary_key.columns  # type: ignore[attr-defined]
                row = (
                    session.query(model)
                    .filter(getattr(model, LINK_COLUMN) == key)
                    .order_by(*pk)
                    .first()
                )
                if row is not None:
                    found[name] = row
            session.expunge_all()
        return found

    def cleanup_orphaned_metadata(self) -> int:
        """Delete custom-metadata rows whose entry no longer exists (left by an
        interrupted removal or by hand); return how many."""
        from cacheness._custom_models import registered_models

        return self._custom_store().cleanup_orphans(registered_models())

    def get_pool_stats(self) -> dict[str, int]:
        """``pool_size``, ``checked_out`` and ``overflow`` of the connection pool that
        custom-metadata queries and sessions use."""
        return self._custom_store().pool_stats()

    def query_meta(self, **filters: Any) -> list[dict[str, Any]]:
        """Like ``list_entries``, on every backend, also matching the built-in fields
        (``data_type``, ``handler``, ``codec``, ``size``, ``content_hash``,
        ``description``, ``cache_key``) besides key parameters and user metadata."""
        self._check_open()
        return [m for m in self._entries(None, {}) if meta_matches(m, filters)]


def meta_matches(meta: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    params = meta.get("key_params") or {}
    user = meta.get("metadata") or {}
    builtin = {f: meta.get(f) for f in BUILTIN_FIELDS if f in meta}
    for name, want in filters.items():
        if not any(name in src and _same(src[name], want) for src in (params, user, builtin)):
            return False
    return True


def _same(have: Any, want: Any) -> bool:
    # JSON turns tuples into lists; 1, 1.0 and True must still differ.
    if isinstance(want, tuple):
        want = list(want)
    return type(have) is type(want) and bool(have == want)
