"""``cached`` and ``cache_if``: option checking and wrapping of functions, methods
and coroutines."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Final, overload

from cacheness._config import CacheConfig, unknown_option
from cacheness.decorator._function import CachedFunction, P, R, _AsyncCachedFunction
from cacheness.storage.errors import CacheConfigError

__all__ = ["cache_if", "cached"]


_DECORATOR_OPTIONS = (
    "ttl_seconds",
    "cache_instance",
    "key_prefix",
    "ignore",
    "key_func",
    "condition",
    "version",
    "lease_ttl_seconds",
)


def _api_result_ok(result: Any) -> bool:
    """What ``cached.for_api`` stores: not None, not an error payload, not an HTTP error."""
    if result is None:
        return False
    status = getattr(result, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and status >= 400:
        return False
    if isinstance(result, Mapping):
        for field in ("error", "errors"):
            if result.get(field):
                return False
    return True


def _wrap(func: Any, options: dict[str, Any]) -> Any:
    if isinstance(func, staticmethod):
        return staticmethod(_wrap(func.__func__, options))
    if isinstance(func, classmethod):
        return classmethod(_wrap(func.__func__, options))
    if isinstance(func, CachedFunction):
        raise CacheConfigError(f"{func!r} is already cached")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise CacheConfigError(
            f"{getattr(func, '__qualname__', func)!r} is a generator function: its result is a "
            "one-shot iterator that cannot be stored. Cache a function that returns a list "
            "(e.g. list(gen(...))) instead"
        )
    if not callable(func):
        raise CacheConfigError(f"@cached decorates a function, not {type(func).__name__}")
    decorator = {k: v for k, v in options.items() if k in _DECORATOR_OPTIONS}
    cache_options = {k: v for k, v in options.items() if k not in _DECORATOR_OPTIONS}
    if cache_options and decorator.get("cache_instance") is not None:
        raise CacheConfigError(
            f"cache options {sorted(cache_options)} and cache_instance= were both given; "
            "configure the cache you pass instead"
        )
    cls: type[CachedFunction[Any, Any]] = (
        _AsyncCachedFunction if inspect.iscoroutinefunction(func) else CachedFunction
    )
    wrapped = cls(func, cache_options=cache_options, **decorator)
    if cls is _AsyncCachedFunction:
        _mark_coroutine(wrapped)
    return wrapped


def _mark_coroutine(obj: Any) -> None:
    """Make ``inspect.iscoroutinefunction`` (3.12+) / ``asyncio.iscoroutinefunction`` true."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        mark(obj)
        return
    import asyncio.coroutines

    marker = getattr(asyncio.coroutines, "_is_coroutine", None)
    if marker is not None:
        obj._is_coroutine = marker


def _check_options(options: Mapping[str, Any]) -> None:
    valid = list(_DECORATOR_OPTIONS) + CacheConfig.field_names()
    for name in options:
        if name not in valid:
            raise unknown_option(name, valid, "@cached")


class _Cached:
    """``@cached`` / ``@cached(...)``: see :func:`cached`'s module documentation."""

    @overload
    def __call__(self, func: Callable[P, R], /) -> CachedFunction[P, R]: ...

    @overload
    def __call__(
        self, func: None = None, /, **options: Any
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]: ...

    def __call__(self, func: Any = None, /, **options: Any) -> Any:
        """Cache the results of ``func`` (bare ``@cached``) or make a decorator with options.

        Options: ``ttl_seconds`` (default: the cache's ``default_ttl_seconds``;
        None: never expires), ``cache_instance`` (default: ``get_cache()``, or a
        cache of the decorator's own when cache options such as
        ``cache_dir=...`` are given), ``key_prefix`` (default: the function's
        ``module.qualname``), ``ignore`` (parameter names left out of the key),
        ``key_func`` (called with the arguments; its result is the key's
        content), ``condition`` (``condition(result)`` decides whether a result
        is stored), ``version`` (changing it makes old results unreachable),
        ``lease_ttl_seconds`` (how long another process waits for a creator
        that stopped renewing its lease; None: no cross-process coordination;
        a body whose recent computations were all under a millisecond runs
        without a lease).
        """
        _check_options(options)
        if func is not None:
            return _wrap(func, options)
        return lambda f: _wrap(f, options)

    def for_api(self, func: Any = None, /, *, ttl_seconds: float = 21600, **options: Any) -> Any:
        """A preset for JSON-like API responses: 6 h TTL, the lz4 codec when the decorator
        opens its own cache, and no caching of ``None``, ``{"error": ...}`` payloads or
        responses with ``status_code >= 400`` (exceptions are never cached)."""
        options.setdefault("condition", _api_result_ok)
        options["ttl_seconds"] = ttl_seconds
        if any(k not in _DECORATOR_OPTIONS for k in options):
            options.setdefault("compression", "lz4")
        return self(func, **options) if func is not None else self(**options)

    def __repr__(self) -> str:
        return "<cacheness.cached>"


cached: Final = _Cached()


def cache_if(condition: Callable[[Any], bool], /, **options: Any) -> Any:
    """``@cache_if(lambda result: ...)``: ``@cached(condition=...)`` under the name the
    single-package cacheness used."""
    if not callable(condition):
        raise CacheConfigError(f"cache_if takes a condition on the result, not {condition!r}")
    return cached(condition=condition, **options)
