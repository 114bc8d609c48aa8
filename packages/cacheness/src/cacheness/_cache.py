"""``cacheness`` (alias ``UnifiedCache``): caching semantics over ``cacheness.storage``.

Layout of a cache directory::

    metadata.sqlite                   the BlobStore's metadata and the cache index tables
                                      (see ``_index``); small unsigned values in the index rows
    metadata.json, cache_index.json   the same with metadata_backend="json"
    blobs/ tmp/                       the BlobStore's content (deduplicated, values > 16 KiB)
    cache_generation                  8 bytes, memory-mapped: the write counter

A put stores the value in the BlobStore under a fresh store key
(``<cache key>#<random>``) and commits the index row pointing at it (on
SQLite in the same transaction as the store entry), and only then deletes
the value it replaced and any eviction victims. On SQLite without signing, a
value that fits inline skips the store: the index row holds it (its store key
then starts with NUL, ``is_held``), so its put writes one row and its get reads
one. Elsewhere a get is one lookup in the index plus one ``BlobStore.get``. A directory made before
the index moved into metadata.sqlite keeps its ``cache_index.sqlite``.

Access times and hit counts are not written on every get: they wait in
memory (``_reads``) and are written in one transaction every
``access_flush_seconds`` (default 1 s) or once reads of 4096 distinct keys
wait, by a put that evicts (so eviction sees them), by ``stats()`` and on
``close()``. LRU/LFU order and hit counts from other processes are therefore
up to that long out of date; the persisted counters lose at most the
unwritten part if a process is killed.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from cacheness._config import DEFAULT_MAX_CACHE_SIZE_MB, CacheConfig
from cacheness._custom_metadata import CustomMetadataMixin
from cacheness._reads import ReadLog
from cacheness._tier import MemoryTier
from cacheness.keys import make_key, render_params
from cacheness.policy import (
    HELD_MARK,
    CacheIndex,
    Generation,
    IndexRow,
    Limits,
    PutResult,
    SharedSqliteIndex,
    SqliteIndex,
    filter_matches,
    is_held,
)
from cacheness.storage import BlobStore
from cacheness.storage.abc import EntryRecord
from cacheness.storage.backends._rows import load_record
from cacheness.storage.errors import (
    CacheBackendError,
    CacheConfigError,
    CacheError,
    CacheIntegrityError,
    CacheKeyError,
    CacheSerializationError,
    CacheStorageError,
)

__all__ = ["UnifiedCache", "cacheness"]

logger = logging.getLogger(__name__)
# Store-key suffixes: a generator of our own, so random.seed(0) in user code cannot
# make two processes pick the same store key for one cache key.
_rng = random.Random()
if hasattr(os, "register_at_fork"):  # POSIX; elsewhere processes are spawned, not forked
    os.register_at_fork(after_in_child=_rng.seed)
_randbits = _rng.getrandbits


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset()
_MISS: Final = object()
# Store entries nobody's index row names (a process killed between its store
# write and its index commit) are removed by cleanup_expired() after this long.
_ORPHAN_GRACE_S = 3600.0
# clear() removes them after this long: a put's store write and its index row are
# never that far apart, and a clear should free the space of a crash's leftovers.
_CLEAR_GRACE_S = 60.0


def _check_cache_key(key: object) -> str:
    if not isinstance(key, str) or not key or "\x00" in key:
        raise CacheKeyError(
            f"cache_key must be a non-empty str without NUL characters, not {key!r}"
        )
    return key


def _release_lease_sql(lease: tuple[str, str], conn: Any) -> None:
    conn.execute("DELETE FROM cache_leases WHERE name = ? AND owner = ?", lease)


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class UnifiedCache(CustomMetadataMixin):
    """A persistent cache of Python objects, keyed by the parameters that produced them.

    ``cacheness()`` keeps its data in ``$CACHENESS_DIR`` or ``./.cacheness``;
    pass a :class:`CacheConfig`, or any of its fields as keywords
    (``cacheness(cache_dir="./c", default_ttl_seconds=3600)``).

    >>> cache = cacheness(metadata_backend="memory")
    >>> key = cache.put([1, 2, 3], model="x", version=2)
    >>> cache.get(version=2, model="x")
    [1, 2, 3]
    >>> cache.get(model="y") is None
    True
    >>> cache.close()
    """

    def __init__(self, config: CacheConfig | None = None, /, **options: Any) -> None:
        if config is None and isinstance(options.get("config"), CacheConfig):
            config = options.pop("config")
        if config is None:
            config = CacheConfig.from_kwargs(options)
        elif not isinstance(config, CacheConfig):
            raise CacheConfigError(
                f"the first argument of cacheness() is a CacheConfig, not {type(config).__name__}"
            )
        elif options:
            config = config.replace(**options)
        self.config = config
        self._clock: Callable[[], float] = time.time
        self._closed = True
        sec = config.security
        backend = config.metadata_backend
        blob_backend = config.blob_backend or ("memory" if backend == "memory" else "file")
        needs_dir = backend != "memory" or blob_backend == "file"
        root = config.path if needs_dir else None
        if root is not None:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                raise CacheConfigError(
                    f"cache_dir {str(root)!r} cannot be created: a file stands at that path "
                    f"or at one of its parents ({exc.strerror})"
                ) from exc
            except OSError as exc:
                raise CacheStorageError(f"cannot create cache_dir {str(root)!r}: {exc}") from exc
        self._store = BlobStore(
            root,
            backend=backend,
            blob_backend=blob_backend,
            compression=config.compression,
            signing_key=sec.signing_key,
            require_signatures=sec.require_signatures,
            custom_signed_fields=sec.custom_signed_fields,
            allow_dill=sec.allow_dill,
        )
        try:
            self._index = self._open_index(root)
        except BaseException:
            self._store.close()
            raise
        self._gen = self._index.generation
        # One query per get (index row joined to the store entry) needs the store's
        # columns a load reads; a signed store verifies the whole record instead.
        self._joined = isinstance(self._index, SharedSqliteIndex) and self._store._signer is None
        self._limits = Limits(config.max_entries, config.max_bytes, config.eviction_policy)
        self._default_ttl = (
            None if config.default_ttl_seconds is None else float(config.default_ttl_seconds)
        )
        self._tier = (
            MemoryTier(config.memory_cache_entries) if config.memory_cache_entries else None
        )
        # A get reads only a held value and its format (lookup_value); the tier
        # also needs the store key and expiry to remember it by (lookup_for_tier).
        self._value_get = self._joined and self._tier is None
        # Reads counted in memory until written (see _reads); bound methods as
        # attributes, so a get's count is one call, as a method of this class would be.
        log = ReadLog(config.access_flush_seconds, self._index.flush)
        self._hit = log.hit
        self._miss = log.miss
        self._add_miss = log.add_miss
        self._take_pending = log.take
        self._flush = log.flush
        self._pending_hits = log.pending_hits
        self._settle = log.settle
        self._pending_counts = log.pending_counts
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._evict_logged = False
        self._closed = False

    def _open_index(self, root: Any) -> CacheIndex:
        policy = self.config.eviction_policy
        if "://" in self.config.metadata_backend:
            # A SQLAlchemy URL: the index lives in that database too (a team's PostgreSQL).
            from cacheness.policy._sqlalchemy import SqlAlchemyIndex

            return SqlAlchemyIndex(self.config.metadata_backend, policy)
        if self.config.metadata_backend == "json":
            from cacheness.policy._json import JsonIndex

            return JsonIndex(
                root / "cache_index.json", Generation(root / "cache_generation"), policy
            )
        from cacheness.policy import SqliteIndex
        from cacheness.storage.backends import SqliteMetadataBackend

        if self.config.metadata_backend == "memory":
            return SqliteIndex(None, Generation(None), policy)
        meta = self._store.metadata_backend
        legacy = root / "cache_index.sqlite"
        if isinstance(meta, SqliteMetadataBackend) and not legacy.exists():
            # The index tables live in the store's own file: one transaction per
            # put, one query per small get.
            return SharedSqliteIndex(meta, Generation(root / "cache_generation"), policy)
        # A cache made before the index moved into metadata.sqlite keeps its own file.
        return SqliteIndex(legacy, Generation(root / "cache_generation"), policy)

    # ------------------------------------------------------------------ keys

    def _key(
        self, cache_key: str | None, params: dict[str, Any], on: Mapping[str, Any] | None
    ) -> str:
        if on:
            params = self._merge_on(params, on)
        if cache_key is not None:
            return _check_cache_key(cache_key)
        if not params:
            raise CacheKeyError(
                "no key parameters given: pass keyword arguments (model='x'), on={...} or "
                "cache_key=..."
            )
        return make_key(params)

    @staticmethod
    def _merge_on(params: dict[str, Any], on: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(on, Mapping):
            raise CacheKeyError(f"on= takes a dict of key parameters, not {type(on).__name__}")
        both = set(params) & set(on)
        if both:
            raise CacheKeyError(
                f"key parameter(s) {sorted(both)} given both as keywords and in on={{...}}; "
                "give each once"
            )
        return {**params, **on}

    def cache_key(self, *, on: Mapping[str, Any] | None = None, **key_params: Any) -> str:
        """The key ``put``/``get`` would use for these key parameters."""
        return self._key(None, key_params, on)

    # ------------------------------------------------------------------ reads

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError("this cache is closed; create a new one with cacheness(...)")

    def _recheck_tier(self, key: str, ent: list[Any], now: float) -> list[Any] | None:
        """``ent`` if the memory tier's entry for ``key`` is still current and live
        (its generation is brought up to date), else None after dropping it."""
        assert self._tier is not None
        gen = self._gen.read()
        if ent[3] != gen:
            # Someone wrote since this entry was checked: is it still the current value?
            found = self._index.lookup(key)
            if found is None or found[0] != ent[1]:
                self._tier.pop(key)
                return None
            ent[2] = found[1]
            ent[3] = gen
        if ent[2] is not None and ent[2] <= now:
            self._tier.pop(key)
            return None
        return ent

    def get(
        self,
        /,
        *,
        cache_key: str | None = None,
        default: Any = None,
        on: Mapping[str, Any] | None = None,
        strict_verification: bool = True,
        **key_params: Any,
    ) -> Any:
        """The value stored for these key parameters, or ``default`` on a miss or expiry."""
        if cache_key is None and on is None and key_params:
            key = make_key(key_params)
        elif type(cache_key) is str and cache_key and not on:
            key = cache_key  # the decorator's hot path: a key computed before
        else:
            key = self._key(cache_key, key_params, on)
        if self._closed:
            self._check_open()
        now = self._clock()
        if self._value_get:
            r = self._index.lookup_value(key, now)  # type: ignore[attr-defined]
            if r is None:
                self._miss()
                return default
            fmt = r[2]
            if r[1] is None:  # the value is in the store: skip the whole-row read
                return self._get_stored(key, now, default, strict_verification, 0)
            if fmt != "":  # the row holds a live value
                try:
                    value = self._held_bytes(key, r[0], r[1], fmt, strict_verification)
                except CacheIntegrityError as exc:
                    row = self._index.lookup_held(key)  # type: ignore[attr-defined]
                    if row is not None and row[5] == r[0] and row[7] == r[1]:
                        self._bad_entry(key, row[0], exc)  # still the value that failed
                        self._miss()
                        return default
                    # Replaced meanwhile: what the row holds now is read below.
                else:
                    self._hit(key, now)
                    return value
            # Expired, in the store, or replaced after failing its checks: the whole row decides.
        gen = 0
        tier = self._tier
        if tier is not None:
            ent = tier.entries.get(key)
            if ent is not None:
                # The repeated hit, inline: nothing written since the entry was checked.
                if ent[3] != self._gen.read() or (ent[2] is not None and ent[2] <= now):
                    ent = self._recheck_tier(key, ent, now)
                if ent is not None:
                    try:
                        tier.entries.move_to_end(key)  # atomic under the GIL; a pop may win
                    except KeyError:
                        pass
                    self._hit(key, now)
                    return ent[0]
            gen = self._gen.read()  # before the read: a later write makes the tier re-check
        if self._joined:
            index: Any = self._index
            r = index.lookup_for_tier(key)
            if r is None:
                self._miss()
                return default
            fmt = r[4]
            if fmt == "":
                return self._get_stored(key, now, default, strict_verification, gen)
            store_key, expires = r[0], r[1]
            if expires is not None and expires <= now:
                self._expire(key, store_key)
                return default
            try:
                value = self._held_bytes(key, r[2], r[3], fmt, strict_verification)
            except CacheIntegrityError as exc:
                self._bad_entry(key, store_key, exc)
                value = _MISS
        else:
            found = self._index.lookup(key)
            if found is None:
                self._miss()
                return default
            store_key, expires = found
            if expires is not None and expires <= now:
                self._expire(key, store_key)
                return default
            value = self._load(key, store_key, strict_verification)
        if value is _MISS:
            self._miss()
            return default
        if self._tier is not None:
            self._tier.put(key, value, store_key, expires, gen)
        self._hit(key, now)
        return value

    def _held_bytes(
        self, key: str, content_hash: str, data: bytes, fmt: str | None, strict: bool
    ) -> Any:
        """The value an index row holds as ``data``, ``fmt`` as ``lookup_value`` gives
        it: None for a plain pickle, else the JSON array [handler, codec, size, info]."""
        if fmt is None:
            return self._store.get_plain_pickle(key, content_hash, data, strict)
        handler, codec, size, info = json.loads(fmt)
        return self._store.get_inline(key, handler, codec, size, content_hash, info, data, strict)

    def _get_stored(self, key: str, now: float, default: Any, strict: bool, gen: int) -> Any:
        """``get`` of a key whose index row does not hold its value: the row again,
        joined to the value's store entry (it may have changed since the first read)."""
        index: Any = self._index
        r = index.lookup_entry(key)
        if r is None:
            self._miss()
            return default
        store_key, expires = r[0], r[1]
        if expires is not None and expires <= now:
            self._expire(key, store_key)
            return default
        value = _MISS
        try:
            if r[2] is None:
                self._index.remove(key, store_key)  # the store entry is gone: see _load
            else:
                value = self._store.get_record(
                    load_record(store_key, r[2:]), _MISS, strict_verification=strict
                )
        except CacheIntegrityError as exc:
            self._bad_entry(key, store_key, exc)
        if value is _MISS:
            self._miss()
            return default
        if self._tier is not None:
            self._tier.put(key, value, store_key, expires, gen)
        self._hit(key, now)
        return value

    def _load(self, key: str, store_key: str, strict: bool) -> Any:
        try:
            if is_held(store_key):
                # Held by an unsigned process sharing this directory: the signed
                # store's checks still apply (an unsigned value fails them when strict).
                got = self._held_value(key, store_key, strict)
                value = _MISS if got is None else got[0]
            else:
                value = self._store.get(store_key, _MISS, strict_verification=strict)
        except CacheIntegrityError as exc:
            self._bad_entry(key, store_key, exc)
            return _MISS
        if value is _MISS:
            # The index names a value the store no longer has (a process died
            # between the two writes, or an eviction raced this read): a miss.
            self._index.remove(key, store_key)
        return value

    def _held(self, key: str, store_key: str) -> EntryRecord | None:
        index: Any = self._index  # only a SharedSqliteIndex holds values
        record: EntryRecord | None = index.held_record(key, store_key)
        return record

    def _held_value(self, key: str, store_key: str, strict: bool) -> tuple[Any, EntryRecord] | None:
        """The value ``key``'s row holds and its record, with every check a store get
        makes; None when the row no longer holds the value put as ``store_key``."""
        record = self._held(key, store_key)
        if record is None:
            return None
        return self._store.get_record(record, strict_verification=strict), record

    def _value_meta(self, key: str, store_key: str) -> dict[str, Any] | None:
        """The store's metadata of the value ``store_key`` (wherever it is held)."""
        if is_held(store_key):
            record = self._held(key, store_key)
            return None if record is None else self._store.describe(record)
        return self._store.get_metadata(store_key)

    def _drop_value(self, store_key: str) -> None:
        """Delete a replaced or removed value from the store (a held one went with its row)."""
        if not is_held(store_key):
            self._store.delete(store_key)

    def _bad_entry(self, key: str, store_key: str, exc: CacheIntegrityError) -> None:
        meta = self._value_meta(key, store_key)
        bad_signature = meta is not None and meta.get("signature_valid") is False
        remove = not bad_signature or self.config.security.delete_invalid_signatures
        logger.warning(
            "cache entry %s could not be read (%s); treating it as a miss%s",
            key,
            exc,
            " and removing it" if remove else "",
        )
        if remove and self._index.remove(key, store_key) is not None:
            self._drop_value(store_key)
            if self._tier is not None:
                self._tier.pop(key)

    def _expire(self, key: str, store_key: str) -> None:
        self._add_miss()
        if self._index.remove(key, store_key, counter="expired") is not None:
            self._drop_value(store_key)
        if self._tier is not None:
            self._tier.pop(key)

    def _live_row(self, key: str) -> IndexRow | None:
        row = self._index.row(key)
        if row is None:
            return None
        if row.expires is not None and row.expires <= self._clock():
            if self._index.remove(key, row.store_key, counter="expired") is not None:
                self._drop_value(row.store_key)
            return None
        return row

    def exists(
        self,
        /,
        *,
        cache_key: str | None = None,
        on: Mapping[str, Any] | None = None,
        **key_params: Any,
    ) -> bool:
        """True when an unexpired entry exists for these key parameters (not counted as a hit)."""
        key = self._key(cache_key, key_params, on)
        self._check_open()
        found = self._index.lookup(key)
        return found is not None and (found[1] is None or found[1] > self._clock())

    def _describe(self, row: IndexRow, store_meta: Mapping[str, Any]) -> dict[str, Any]:
        meta = dict(store_meta)
        meta["key"] = row.key
        meta["cache_key"] = row.key
        meta["key_params"] = row.key_params
        meta["description"] = row.description
        meta["expires_at"] = _utc(row.expires)
        meta["accessed_at"] = _utc(row.accessed)
        meta["hits"] = row.hits + self._pending_hits(row.key)
        return meta

    def get_with_metadata(
        self,
        /,
        *,
        cache_key: str | None = None,
        on: Mapping[str, Any] | None = None,
        strict_verification: bool = True,
        **key_params: Any,
    ) -> tuple[Any, dict[str, Any]] | None:
        """``(value, metadata)`` or None on a miss; metadata is the store's plus
        ``key_params``, ``expires_at``, ``hits``, ``description`` and ``cache_key``."""
        key = self._key(cache_key, key_params, on)
        self._check_open()
        self._settle()  # rows then hold every hit but those still pending
        row = self._index.row(key)
        now = self._clock()
        if row is None:
            self._miss()
            return None
        if row.expires is not None and row.expires <= now:
            self._expire(key, row.store_key)
            return None
        try:
            if is_held(row.store_key):
                held = self._held_value(key, row.store_key, strict_verification)
                got = None if held is None else (held[0], self._store.describe(held[1]))
            else:
                got = self._store.get_with_metadata(
                    row.store_key, strict_verification=strict_verification
                )
        except CacheIntegrityError as exc:
            self._bad_entry(key, row.store_key, exc)
            got = None
        if got is None:
            self._index.remove(key, row.store_key)
            self._miss()
            return None
        self._hit(key, now)
        return got[0], self._describe(row, got[1])

    def get_metadata(
        self,
        /,
        *,
        cache_key: str | None = None,
        on: Mapping[str, Any] | None = None,
        **key_params: Any,
    ) -> dict[str, Any] | None:
        """The metadata ``get_with_metadata`` returns, without loading the value."""
        key = self._key(cache_key, key_params, on)
        self._check_open()
        self._settle()
        row = self._live_row(key)
        if row is None:
            return None
        store_meta = self._value_meta(key, row.store_key)
        return None if store_meta is None else self._describe(row, store_meta)

    def list_entries(self, **filters: Any) -> list[dict[str, Any]]:
        """Metadata of every unexpired entry whose key parameters or user metadata
        equal all of ``filters`` (sorted by cache key)."""
        self._check_open()
        return self._entries(None, filters)

    def _entries(self, prefix: str | None, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        self._flush()
        now = self._clock()
        out = []
        for row in self._index.rows(prefix):
            if row.expires is not None and row.expires <= now:
                continue
            if filters and not filter_matches(row, filters):
                continue
            store_meta = self._value_meta(row.key, row.store_key)
            if store_meta is not None:
                out.append(self._describe(row, store_meta))
        return out

    # ----------------------------------------------------------------- writes

    def _ttl(self, ttl_seconds: Any) -> float | None:
        ttl = self.config.default_ttl_seconds if ttl_seconds is _UNSET else ttl_seconds
        if ttl is None:
            return None
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
            raise CacheConfigError(f"ttl_seconds must be a number > 0 or None, not {ttl!r}")
        return float(ttl)

    def _new_store_key(self, key: str) -> str:
        # A private generator, reseeded in a forked child (see _randbits): os.urandom
        # is a system call per put; the global random is reseeded by user code.
        return f"{key}#{_randbits(64):016x}"

    def put(
        self,
        data: Any,
        /,
        *,
        ttl_seconds: float | _Unset | None = _UNSET,
        metadata: Mapping[str, Any] | None = None,
        description: str | None = None,
        on: Mapping[str, Any] | None = None,
        cache_key: str | None = None,
        custom_metadata: Any = None,
        **key_params: Any,
    ) -> str:
        """Store ``data`` under the key of these key parameters; return the key.

        ``ttl_seconds`` (default ``default_ttl_seconds``; None: never expires),
        ``metadata`` (JSON-able dict, filterable with ``list_entries``),
        ``description`` and ``on={...}`` (key parameters whose names are
        reserved) are not key parameters. With ``cache_key=...`` the key is
        the one given, and the key parameters, if any, are only recorded.
        """
        # Positional: keywords cost ~0.3 µs of a small put.
        return self._put(
            data, key_params, ttl_seconds, metadata, description, on, cache_key, custom_metadata
        )[0]

    def _put(
        self,
        data: Any,
        key_params: dict[str, Any],
        ttl_seconds: float | _Unset | None = _UNSET,
        metadata: Mapping[str, Any] | None = None,
        description: str | None = None,
        on: Mapping[str, Any] | None = None,
        cache_key: str | None = None,
        custom_metadata: Any = None,
        remember: bool = False,
        lease: tuple[str, str] | None = None,
    ) -> tuple[str, bool]:
        """``put``; with ``remember`` the memory tier keeps ``data`` itself, so the next
        hit in this process skips the store. Only for callers that hand the same object
        back anyway (the decorator returns its result, as functools.lru_cache does);
        ``put`` must not, or a caller mutating ``data`` later would change a cached value.

        ``lease=(name, owner)`` is released in the put's own transaction where the
        index allows it (SQLite), saving the decorator a write. Returns the key and
        whether the lease was released (False: the caller releases it)."""
        params = self._merge_on(key_params, on) if on else key_params
        key = (
            make_key(params) if cache_key is None and params else self._key(cache_key, params, None)
        )
        if self._closed:
            self._check_open()
        # Before the put's transaction, never in it (the write-behind needs the write
        # lock); then an evicting put chooses its victims from up-to-date access data.
        self._settle()
        expires_in = self._default_ttl if ttl_seconds is _UNSET else self._ttl(ttl_seconds)
        custom = None if custom_metadata is None else self._prepare_custom_metadata(custom_metadata)
        if description is not None and not isinstance(description, str):
            raise CacheConfigError(f"description must be a str, not {type(description).__name__}")
        rendered = render_params(params) if params else None
        store_key = self._new_store_key(key)
        done: list[tuple[IndexRow, PutResult]] = []
        gen_before = self._gen.read() if self._tier is not None else 0
        release: Callable[[Any], None] | None = None
        if lease is not None and custom is None and isinstance(self._index, SqliteIndex):
            release = functools.partial(_release_lease_sql, lease)

        joined = self._joined

        def index_put(record: EntryRecord) -> None:
            # Joined, the store hands over only what it did not write: inline values.
            held = joined and record.inline is not None
            now = self._clock()
            # Positional (key, store_key, content_hash, size, created, accessed, hits,
            # expires, key_params, description, metadata, inline): cheaper than keywords.
            row = IndexRow(
                key,
                HELD_MARK + store_key if held else store_key,
                record.content_hash,
                record.size,
                now,
                now,
                0,
                None if expires_in is None else now + expires_in,
                rendered,
                description,
                record.metadata,
                record.inline is not None,
                record if held else None,
            )
            if custom is None:
                if release is None:
                    result = self._index.put(row, self._limits, self._take_pending)
                else:
                    index: Any = self._index
                    result = index.put(row, self._limits, self._take_pending, extra=release)
                done.append((row, result))
            else:
                done.append((row, self._put_with_custom(row, custom)))

        try:
            if joined:
                # A small value lives in its index row (one B-tree, one transaction); a
                # larger one's store entry commits in the index row's transaction.
                self._store.put_record(
                    data, key=store_key, metadata=metadata, within=index_put, keep_inline=index_put
                )
            elif isinstance(self._index, SharedSqliteIndex):
                # Store entry and index row in one transaction: both or neither.
                self._store.put_record(data, key=store_key, metadata=metadata, within=index_put)
            else:
                record = self._store.put_record(data, key=store_key, metadata=metadata)
                try:
                    index_put(record)
                except BaseException:
                    self._store.delete(store_key)
                    raise
        except CacheSerializationError as exc:
            self._index._forget_reached()
            # The store names its own key (the cache key and a random suffix).
            raise CacheSerializationError(
                exc.message.replace(repr(store_key), repr(key)), key=key, backend=exc.backend
            ) from exc
        except BaseException:
            self._index._forget_reached()
            raise
        self._index.publish()  # committed, the store's transaction too (a shared index joins it)
        row, result = done[0]
        if self._tier is not None:
            if not remember:
                self._tier.pop(key)
            elif result.generation is not None:
                # The row is current at the generation its transaction saw.
                self._tier.put(key, data, row.store_key, row.expires, result.generation)
            else:
                # Our own write bumped the counter once; any other bump in between
                # leaves the tier entry at gen_before, so the next hit re-checks.
                gen_after = self._gen.read()
                gen = gen_after if gen_after == gen_before + 1 else gen_before
                self._tier.put(key, data, row.store_key, row.expires, gen)
        self._after_write(key, result, row.size)
        return key, release is not None

    def _after_write(self, key: str, result: PutResult, size: int) -> None:
        """Delete what a put or update replaced or evicted from the store (the rows went
        in its transaction, and moved the generation: a memory tier re-checks)."""
        if result.replaced:
            self._drop_value(result.replaced)
        if result.victims:
            for old in result.victims:
                self._drop_value(old)
            self._log_eviction(len(result.victims))
        if result.oversized:
            logger.warning(
                "entry %s (%d bytes) is larger than max_cache_size_mb=%s on its own; it was "
                "kept, and every other entry was evicted",
                key,
                size,
                self.config.max_cache_size_mb,
            )

    def _log_eviction(self, n: int) -> None:
        cfg = self.config
        default = cfg.max_cache_size_mb == DEFAULT_MAX_CACHE_SIZE_MB and cfg.max_entries is None
        level = logging.DEBUG if self._evict_logged else logging.INFO
        self._evict_logged = True
        logger.log(
            level,
            "evicted %d entr%s (policy %s) to stay within max_entries=%s, max_cache_size_mb=%s%s",
            n,
            "y" if n == 1 else "ies",
            cfg.eviction_policy,
            cfg.max_entries,
            cfg.max_cache_size_mb,
            " (the default; pass max_cache_size_mb=None for no size limit)" if default else "",
        )

    def update_data(
        self,
        data: Any,
        /,
        *,
        cache_key: str | None = None,
        on: Mapping[str, Any] | None = None,
        **key_params: Any,
    ) -> bool:
        """Replace the value of an existing entry, keeping its expiry, parameters and
        metadata; False when there is no such (unexpired) entry."""
        key = self._key(cache_key, key_params, on)
        self._check_open()
        row = self._live_row(key)
        if row is None:
            return False
        store_key = self._new_store_key(key)
        self._store.put(data, key=store_key, metadata=row.metadata)
        self._settle()  # as in put: the write-behind needs the write lock
        try:
            meta = self._store.get_metadata(store_key)
            result = None
            if meta is not None:
                result = self._index.replace_value(
                    key,
                    store_key,
                    meta["content_hash"],
                    int(meta["size"]),
                    self._clock(),
                    self._limits,
                    self._take_pending,
                )
        except BaseException:
            self._store.delete(store_key)
            raise
        if result is None:
            self._store.delete(store_key)
            return False
        if self._tier is not None:
            self._tier.pop(key)
        self._after_write(key, result, int(meta["size"]) if meta is not None else 0)
        return True

    def touch(
        self,
        /,
        ttl_seconds: float | _Unset | None = _UNSET,
        *,
        cache_key: str | None = None,
        on: Mapping[str, Any] | None = None,
        **key_params: Any,
    ) -> bool:
        """Restart the lifetime of an entry: ``ttl_seconds`` from now (default
        ``default_ttl_seconds``; None: never expires). False when absent or expired."""
        key = self._key(cache_key, key_params, on)
        self._check_open()
        ttl = self._ttl(ttl_seconds)
        if self._live_row(key) is None:
            return False
        now = self._clock()
        return self._index.touch(key, None if ttl is None else now + ttl, now)

    def invalidate(
        self,
        /,
        *,
        cache_key: str | None = None,
        on: Mapping[str, Any] | None = None,
        **key_params: Any,
    ) -> bool:
        """Remove the entry for these key parameters; False when there was none."""
        key = self._key(cache_key, key_params, on)
        self._check_open()
        store_key = self._index.remove(key)
        if self._tier is not None:
            self._tier.pop(key)
        if store_key is None:
            return False
        self._drop_value(store_key)
        return True

    delete = invalidate

    def cleanup_expired(self) -> int:
        """Remove every expired entry now; return how many."""
        self._check_open()
        self._flush()
        gone = self._index.sweep_expired(self._clock())
        for store_key in gone:
            self._drop_value(store_key)
        self._sweep_orphans(_ORPHAN_GRACE_S)
        if gone and self._tier is not None:
            self._tier.clear()
        return len(gone)

    def _sweep_orphans(self, grace: float | None) -> int:
        """Delete store entries no index row names (older than ``grace`` seconds)."""
        cutoff = None if grace is None else self._clock() - grace
        # The store first, then the index: a put committing between the two reads is
        # then in ``referenced``. (The other way round its entry looked orphaned.)
        listed = list(self._store.list())
        referenced = self._index.store_keys()
        n = 0
        for store_key in listed:
            if store_key in referenced:
                continue
            if cutoff is not None:
                meta = self._store.get_metadata(store_key)
                if meta is None or meta["created_at"].timestamp() > cutoff:
                    continue
            if self._store.delete(store_key):
                n += 1
        return n

    def clear(self) -> int:
        """Remove every entry; return how many there were."""
        self._check_open()
        self._flush()
        gone = self._index.clear()
        for store_key in gone:
            self._drop_value(store_key)
        # Entries of puts still in flight (the JSON index writes its row after the
        # store's) are not orphans: only those older than a minute go.
        self._sweep_orphans(_CLEAR_GRACE_S)
        if self._tier is not None:
            self._tier.clear()
        return len(gone)

    clear_all = clear

    def _delete_prefix(self, prefix: str) -> int:
        """Remove the entries whose cache key starts with ``prefix`` (for ``@cached``'s
        ``cache_clear``); return how many."""
        self._check_open()
        gone = self._index.clear(_check_cache_key(prefix))
        for store_key in gone:
            self._drop_value(store_key)
        if self._tier is not None:
            self._tier.clear()
        return len(gone)

    def _count_prefix(self, prefix: str) -> int:
        """How many unexpired entries have a cache key starting with ``prefix`` (for
        ``@cached``'s ``cache_info().currsize``)."""
        self._check_open()
        now = self._clock()
        rows = self._index.rows(_check_cache_key(prefix))
        return sum(1 for row in rows if row.expires is None or row.expires > now)

    # ----------------------------------------------------------------- leases

    def _acquire_lease(self, name: str, ttl_seconds: float, owner: str | None = None) -> bool:
        """Take the cross-process lease ``name`` (e.g. "compute key K") for ``ttl_seconds``;
        False while another owner holds it. Owners default to this cache instance."""
        self._check_open()
        return self._index.acquire_lease(name, owner or self._owner, ttl_seconds, self._clock())

    def _release_lease(self, name: str, owner: str | None = None) -> bool:
        self._check_open()
        return self._index.release_lease(name, owner or self._owner)

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """hits, misses, hit_rate, entries, size_bytes (stored, deduplicated), evictions,
        expired: totals of every process that used this cache directory."""
        self._check_open()
        unwritten = (0, 0)
        try:
            self._flush()
        except CacheBackendError as exc:
            # A read must not fail for want of a write (a full disk): the reads not
            # written are counted from memory, and written with a later flush.
            logger.warning("stats(): access data not written (%s); counted from memory", exc)
            unwritten = self._pending_counts()
        c = dict(self._index.counters())
        c["hits"] += unwritten[0]
        c["misses"] += unwritten[1]
        total = c["hits"] + c["misses"]
        return {
            "hits": c["hits"],
            "misses": c["misses"],
            "hit_rate": c["hits"] / total if total else 0.0,
            "entries": c["entries"],
            "size_bytes": c["size_bytes"],
            "evictions": c["evictions"],
            "expired": c["expired"],
        }

    get_stats = stats

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Write pending access data and release every file and connection. Idempotent."""
        if getattr(self, "_closed", True):
            return
        try:
            self._flush()
        finally:
            self._closed = True
            try:
                self._close_custom_metadata()
                self._index.close()
            finally:
                self._store.close()
                if self._tier is not None:
                    self._tier.clear()

    def __enter__(self) -> UnifiedCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        where = "memory" if c.metadata_backend == "memory" else str(c.path)
        return f"cacheness({where!r}, metadata_backend={c.metadata_backend!r})"


cacheness = UnifiedCache
