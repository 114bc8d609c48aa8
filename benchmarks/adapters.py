"""One adapter per system under test.

Store adapters expose ``open(path)``, ``put(key, value)``, ``get(key)``
(returning :data:`MISS` on a miss) and ``close()``. Decorator adapters wrap a
function and expose the wrapped callable. Every adapter imports its system
lazily: a system whose import fails is reported as "unavailable", the run
goes on.

Systems that only offer a decorator (joblib.Memory, cachier) are driven as a
key-value store the way their users precompute results: ``put`` runs the
memoised function on a value handed over through ``_PENDING`` (joblib's
``MemorizedFunc.call`` forces compute-and-store; cachier has
``precache_value``); ``get`` calls the memoised function, whose body raises
:class:`Miss` when it runs — exceptions are never cached by either library.

Adapters report our bugs, they do not hide them: an exception from cacheness
propagates to the workload, which records the row as "error" with the message.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any


class _Missing:
    def __repr__(self) -> str:
        return "MISS"


MISS: Any = _Missing()


class Miss(Exception):
    """Raised by a memoised function's body when a benchmark ``get`` misses."""


# Values handed to joblib/cachier "put" calls: the memoised body returns it.
_PENDING: dict[str, Any] = {}


def _joblib_source(key: str) -> Any:
    try:
        return _PENDING[key]
    except KeyError:
        raise Miss(key) from None


def _cachier_source(key: str) -> Any:
    try:
        return _PENDING[key]
    except KeyError:
        raise Miss(key) from None


def check_import(modules: tuple[str, ...]) -> str | None:
    """None when every module imports, else the reason (for an "unavailable" row)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any import failure means "unavailable", with its text
            return f"import {name} failed: {type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------- stores


class StoreAdapter:
    name = ""
    kind = "peer"
    requires: tuple[str, ...] = ()
    notes = ""

    def unavailable(self) -> str | None:
        return check_import(self.requires)

    def open(self, path: Path) -> None:
        raise NotImplementedError

    def put(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def get(self, key: str) -> Any:
        raise NotImplementedError

    def settle(self) -> None:
        """Finish work that gets left behind (written access data), so that timings
        taken next do not include it."""

    def close(self) -> None:
        pass


class CachenessCache(StoreAdapter):
    """The cache layer: ``cache.put(value, item=key)`` / ``cache.get(item=key)``."""

    kind = "ours"
    requires = ("cacheness",)

    def __init__(self, memory_cache_entries: int | None = None) -> None:
        self.memory_cache_entries = memory_cache_entries
        self.name = "cacheness" if memory_cache_entries is None else "cacheness+mem"
        self.notes = "" if memory_cache_entries is None else "memory_cache_entries tier on"
        self.cache: Any = None

    def unavailable(self) -> str | None:
        reason = check_import(self.requires)
        if reason is None:
            import cacheness

            if not hasattr(cacheness, "cacheness"):
                return "cacheness.cacheness (cache layer) not available yet"
        return reason

    def open(self, path: Path) -> None:
        from cacheness import cacheness

        kwargs: dict[str, Any] = {"cache_dir": str(path)}
        if self.memory_cache_entries is not None:
            kwargs["memory_cache_entries"] = self.memory_cache_entries
        self.cache = cacheness(**kwargs)

    def put(self, key: str, value: Any) -> None:
        self.cache.put(value, item=key)

    def get(self, key: str) -> Any:
        return self.cache.get(item=key, default=MISS)

    def settle(self) -> None:
        self.cache.stats()  # writes the access data the gets counted in memory

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None


class CachenessBlobStore(StoreAdapter):
    """The storage layer alone: ``BlobStore(path).put(value, key=key)``."""

    name = "cacheness.BlobStore"
    kind = "ours"
    requires = ("cacheness.storage",)

    def __init__(self) -> None:
        self.store: Any = None

    def open(self, path: Path) -> None:
        from cacheness.storage import BlobStore

        self.store = BlobStore(str(path))

    def put(self, key: str, value: Any) -> None:
        self.store.put(value, key=key)

    def get(self, key: str) -> Any:
        return self.store.get(key, default=MISS)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


class DiskcacheCache(StoreAdapter):
    name = "diskcache.Cache"
    requires = ("diskcache",)
    notes = ""

    def __init__(self) -> None:
        self.cache: Any = None

    def open(self, path: Path) -> None:
        import diskcache  # type: ignore[import-untyped, unused-ignore]

        # No size limit: the default 1 GB would evict inside the big workloads.
        self.cache = diskcache.Cache(str(path), size_limit=2**62)

    def put(self, key: str, value: Any) -> None:
        self.cache.set(key, value)

    def put_many(self, items: list[tuple[str, Any]]) -> None:
        with self.cache.transact():
            for key, value in items:
                self.cache.set(key, value)

    def get(self, key: str) -> Any:
        return self.cache.get(key, default=MISS)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None


class JoblibMemory(StoreAdapter):
    """``Memory.cache``: put = ``MemorizedFunc.call`` (compute and store), get = a hit."""

    name = "joblib.Memory"
    requires = ("joblib",)

    def __init__(self) -> None:
        self.func: Any = None

    def open(self, path: Path) -> None:
        import joblib  # type: ignore[import-untyped, unused-ignore]

        self.func = joblib.Memory(location=str(path), verbose=0).cache(_joblib_source)
        # joblib records the function's code on the first ordinary call; a first
        # ordinary call that finds entries stored by ``.call()`` but no recorded
        # code treats the function as changed and wipes them. Prime it once.
        self.get("__prime__")

    def put(self, key: str, value: Any) -> None:
        _PENDING[key] = value
        try:
            self.func.call(key)
        finally:
            del _PENDING[key]

    def get(self, key: str) -> Any:
        try:
            return self.func(key)
        except Miss:
            return MISS


class CachierPickle(StoreAdapter):
    """cachier's pickle core with one file per entry (``separate_files=True``)."""

    name = "cachier"
    requires = ("cachier",)
    notes = "pickle core, separate_files=True"

    def __init__(self) -> None:
        self.func: Any = None

    def open(self, path: Path) -> None:
        from cachier import cachier

        self.func = cachier(
            backend="pickle", cache_dir=str(path), separate_files=True, allow_none=True
        )(_cachier_source)

    def put(self, key: str, value: Any) -> None:
        self.func.precache_value(key, value_to_cache=value)

    def get(self, key: str) -> Any:
        try:
            return self.func(key)
        except Miss:
            return MISS


class PickleFile(StoreAdapter):
    """Naive baseline: one pickle file per key, written to a temp name and renamed."""

    name = "pickle-file"
    kind = "baseline"
    notes = "pickle protocol 5 to one file per key"

    def __init__(self) -> None:
        self.root: Path | None = None

    def open(self, path: Path) -> None:
        self.root = path

    def _path(self, key: str) -> str:
        assert self.root is not None
        return str(self.root / (hashlib.sha1(key.encode()).hexdigest() + ".pkl"))

    def put(self, key: str, value: Any) -> None:
        target = self._path(key)
        tmp = f"{target}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)

    def get(self, key: str) -> Any:
        try:
            with open(self._path(key), "rb") as fh:
                return pickle.load(fh)
        except FileNotFoundError:
            return MISS


STORE_FACTORIES: dict[str, Callable[[], StoreAdapter]] = {
    "cacheness": CachenessCache,
    "cacheness+mem": functools.partial(CachenessCache, memory_cache_entries=4096),
    "cacheness.BlobStore": CachenessBlobStore,
    "diskcache.Cache": DiskcacheCache,
    "joblib.Memory": JoblibMemory,
    "cachier": CachierPickle,
    "pickle-file": PickleFile,
}


def make_store(name: str) -> StoreAdapter:
    return STORE_FACTORIES[name]()


# --------------------------------------------------------------------------- decorators


class DecoratorAdapter:
    """Wraps ``func`` with a system's memoising decorator backed by ``path``."""

    name = ""
    kind = "peer"
    requires: tuple[str, ...] = ()
    notes = ""

    def unavailable(self) -> str | None:
        return check_import(self.requires)

    def wrap(self, func: Callable[..., Any], path: Path) -> Callable[..., Any]:
        raise NotImplementedError

    def key_of(self, wrapped: Callable[..., Any], *args: Any) -> Any:
        """The system's key for a call (for the hashing workload); None if it has none."""
        return None

    def close(self) -> None:
        pass


class CachenessCached(DecoratorAdapter):
    kind = "ours"
    requires = ("cacheness",)

    def __init__(self, memory_cache_entries: int | None = None) -> None:
        self.memory_cache_entries = memory_cache_entries
        self.name = "cacheness.cached" if memory_cache_entries is None else "cacheness.cached+mem"
        self.notes = "" if memory_cache_entries is None else "memory_cache_entries tier on"
        self.cache: Any = None

    def unavailable(self) -> str | None:
        reason = check_import(self.requires)
        if reason is None:
            import cacheness

            missing = [n for n in ("cacheness", "cached") if not hasattr(cacheness, n)]
            if missing:
                return f"cacheness.{', cacheness.'.join(missing)} not available yet"
        return reason

    def wrap(self, func: Callable[..., Any], path: Path) -> Callable[..., Any]:
        from cacheness import cached, cacheness

        kwargs: dict[str, Any] = {"cache_dir": str(path)}
        if self.memory_cache_entries is not None:
            kwargs["memory_cache_entries"] = self.memory_cache_entries
        self.cache = cacheness(**kwargs)
        return cached(cache_instance=self.cache)(func)

    def key_of(self, wrapped: Callable[..., Any], *args: Any) -> Any:
        return wrapped.cache_key(*args)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None


class DiskcacheMemoize(DecoratorAdapter):
    name = "diskcache.memoize"
    requires = ("diskcache",)

    def __init__(self) -> None:
        self.cache: Any = None

    def wrap(self, func: Callable[..., Any], path: Path) -> Callable[..., Any]:
        import diskcache  # type: ignore[import-untyped, unused-ignore]

        self.cache = diskcache.Cache(str(path), size_limit=2**62)
        return self.cache.memoize()(func)

    def key_of(self, wrapped: Callable[..., Any], *args: Any) -> Any:
        # What each memoised call pays before its SQLite lookup: the key tuple
        # pickled by Disk.put (the lookup then compares that whole blob).
        return self.cache.disk.put(wrapped.__cache_key__(*args))  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None


class JoblibMemoryCache(DecoratorAdapter):
    name = "joblib.Memory"
    requires = ("joblib",)

    def wrap(self, func: Callable[..., Any], path: Path) -> Callable[..., Any]:
        import joblib  # type: ignore[import-untyped, unused-ignore]

        return joblib.Memory(location=str(path), verbose=0).cache(func)

    def key_of(self, wrapped: Callable[..., Any], *args: Any) -> Any:
        import joblib  # type: ignore[import-untyped, unused-ignore]

        return joblib.hash(args)


class CachierDecorator(DecoratorAdapter):
    name = "cachier"
    requires = ("cachier",)
    notes = "pickle core, separate_files=True"

    def wrap(self, func: Callable[..., Any], path: Path) -> Callable[..., Any]:
        from cachier import cachier

        return cachier(backend="pickle", cache_dir=str(path), separate_files=True, allow_none=True)(
            func
        )

    def key_of(self, wrapped: Callable[..., Any], *args: Any) -> Any:
        from cachier.config import _default_hash_func

        # cachier binds positional arguments to names before hashing.
        return _default_hash_func((), {f"a{i}": a for i, a in enumerate(args)})


class LruCache(DecoratorAdapter):
    name = "functools.lru_cache"
    kind = "reference"
    notes = "in-process floor, not persistent"

    def wrap(self, func: Callable[..., Any], path: Path) -> Callable[..., Any]:
        return functools.lru_cache(maxsize=None)(func)


DECORATOR_FACTORIES: dict[str, Callable[[], DecoratorAdapter]] = {
    "cacheness.cached": CachenessCached,
    "cacheness.cached+mem": functools.partial(CachenessCached, memory_cache_entries=4096),
    "diskcache.memoize": DiskcacheMemoize,
    "joblib.Memory": JoblibMemoryCache,
    "cachier": CachierDecorator,
    "functools.lru_cache": LruCache,
}


def make_decorator(name: str) -> DecoratorAdapter:
    return DECORATOR_FACTORIES[name]()
