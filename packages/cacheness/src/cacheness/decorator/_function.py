"""The wrapper ``@cached`` returns: keys from arguments, stampede control, cache I/O."""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
import threading
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, NamedTuple, ParamSpec, TypeVar

import xxhash

from cacheness._config import CacheConfig, unknown_option
from cacheness.decorator._leases import _LEASED, _MISS, _keeper, _Lease
from cacheness.decorator._owned import _owned
from cacheness.keys import KEY_VERSION, make_key
from cacheness.keys._encoder import _Encoder
from cacheness.keys._wire import _SIMPLE, _Unkeyable
from cacheness.storage.errors import (
    CacheConfigError,
    CacheKeyError,
    CacheSerializationError,
)

if TYPE_CHECKING:
    import asyncio

    from cacheness._cache import UnifiedCache

__all__ = ["CacheInfo", "CachedFunction"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_RETRY: Final = object()  # an async leader failed: its followers try again themselves
_REQUIRED: Final = inspect.Parameter.empty
_HEADER = b"cacheness-cached\x00v%d\x00" % KEY_VERSION
_DEFAULT_LEASE_TTL = 30.0
_POLL_MIN, _POLL_MAX = 0.002, 0.1
# A body whose last _QUICK_RUNS computations each took under _QUICK_S runs without a
# lease: taking and releasing one costs a miss an index write and two reads (~20 µs,
# a fifth of a miss here), more than a second process computing the same key
# meanwhile would waste. One slower computation brings the lease back.
_QUICK_S: Final = 0.001
_QUICK_RUNS: Final = 8
# Encodings of recently seen int and str arguments (only ever looked up for an exact int
# or str, so 1, 1.0 and True, which are equal as dict keys, never meet here).
_MEMO: dict[Any, bytes] = {}
_MEMO_MAX = 4096


class CacheInfo(NamedTuple):
    """``f.cache_info()``: calls of this process served from the cache (``hits``) or by
    running the body (``misses``); the cache's ``max_entries`` (``maxsize``); this
    function's unexpired entries in the cache (``currsize``, every process's)."""

    hits: int
    misses: int
    maxsize: int | None
    currsize: int


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset()


class _Flight:
    """One in-process computation of a key that concurrent callers wait for."""

    __slots__ = ("event", "ok", "thread", "value")

    def __init__(self, thread: int) -> None:
        self.event = threading.Event()
        self.thread = thread
        self.ok = False
        self.value: Any = None


def _check_seconds(name: str, value: Any) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
    ):
        raise CacheConfigError(f"{name} must be a number > 0 or None, not {value!r}")


def _identity(func: Any, key_prefix: str | None) -> str:
    if key_prefix is not None:
        if not isinstance(key_prefix, str) or not key_prefix or "\x00" in key_prefix:
            raise CacheConfigError(
                f"key_prefix must be a non-empty str without NUL characters, not {key_prefix!r}"
            )
        return key_prefix
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise CacheConfigError(
            f"cannot name {func!r} (no __module__/__qualname__) to keep its cache entries apart "
            "from other functions'; pass key_prefix='some.stable.name'"
        )
    name = f"{module}.{qualname}"
    code = getattr(func, "__code__", None)
    if "<lambda>" in qualname:
        # Lambdas of one module share a qualname; their line and column tell them
        # apart (two on one line differ in where their bodies start).
        columns = [c for _, _, c, _ in getattr(code, "co_positions", list)() if c]
        name += f"@{getattr(code, 'co_firstlineno', 0)}:{min(columns, default=0)}"
    return name + _closure_part(func, name)


def _closure_part(func: Any, name: str) -> str:
    """The values a nested function closes over, hashed (``""`` for none): the
    ``inner`` of ``make(2)`` and of ``make(10)`` share a qualname, not results.
    Functions, classes and modules count by name. A value that cannot be keyed (a
    lock, a connection) does not count, as before: refusing it would refuse the
    usual closure over a counter or a logger. Nor does an empty cell (the
    function's own name, while it is being decorated)."""
    cells = getattr(func, "__closure__", None)
    if not cells:
        return ""
    parts: list[str] = []
    for var, cell in zip(func.__code__.co_freevars, cells, strict=True):
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, types.ModuleType):
            value = f"module {value.__name__}"
        elif callable(value) and isinstance(getattr(value, "__qualname__", None), str):
            value = f"{getattr(value, '__module__', '')}.{value.__qualname__}"
        try:
            parts.append(make_key({var: value}))
        except CacheKeyError:
            logger.debug("%s: the variable %r it closes over is not part of its keys", name, var)
    return "#" + xxhash.xxh3_64_hexdigest("".join(parts).encode()) if parts else ""


def _escape(identity: str) -> str:
    # ':' ends the identity in a key, so prefixes of two identities never overlap.
    return identity.replace("%", "%25").replace(":", "%3A")


class CachedFunction(Generic[P, R]):
    """A function wrapped by ``@cached``: call it like the function.

    ``cache_info()``, ``cache_clear()``, ``cache_key(*args, **kwargs)``,
    ``invalidate(*args, **kwargs)`` and ``cache`` (the cache in use) sit beside
    the call; the original function is ``__wrapped__``.
    """

    __name__: str
    __qualname__: str
    __wrapped__: Callable[P, R]

    def __init__(
        self,
        func: Callable[P, R],
        *,
        ttl_seconds: float | _Unset | None = _UNSET,
        cache_instance: UnifiedCache | None = None,
        key_prefix: str | None = None,
        ignore: Iterable[str] = (),
        key_func: Callable[..., Any] | None = None,
        condition: Callable[[Any], bool] | None = None,
        version: Any = None,
        lease_ttl_seconds: float | None = _DEFAULT_LEASE_TTL,
        cache_options: Mapping[str, Any] | None = None,
    ) -> None:
        functools.update_wrapper(self, func)
        self.__wrapped__ = func
        self._func: Callable[..., Any] = func
        self._qualname: str = getattr(func, "__qualname__", "")
        self._identity = _identity(func, key_prefix)
        self._prefix = _escape(self._identity) + ":"
        self._key_func = key_func
        self._condition = condition
        if key_func is not None and not callable(key_func):
            raise CacheConfigError(f"key_func must be callable, not {key_func!r}")
        if condition is not None and not callable(condition):
            raise CacheConfigError(f"condition must be callable, not {condition!r}")
        _check_seconds("lease_ttl_seconds", lease_ttl_seconds)
        self._lease_ttl = None if lease_ttl_seconds is None else float(lease_ttl_seconds)
        self._put_kwargs: dict[str, Any] = {"description": self._identity}
        if not isinstance(ttl_seconds, _Unset):
            _check_seconds("ttl_seconds", ttl_seconds)
            self._put_kwargs["ttl_seconds"] = ttl_seconds
        self._setup_signature(func, tuple([ignore] if isinstance(ignore, str) else ignore))
        try:
            version_bytes = _Encoder().encode(version)
        except _Unkeyable as exc:
            raise CacheConfigError(f"version={version!r} cannot be part of a key: {exc}") from None
        self._header = (
            _HEADER
            + version_bytes
            + _Encoder().encode(("key_func",) if key_func is not None else self._fingerprint)
        )
        # The cache: given, own (opened on first call), or the process-wide one.
        self._instance = cache_instance
        self._cache: UnifiedCache | None = cache_instance
        self._options: CacheConfig | None = None
        self._options_key: Any = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        if cache_options:
            self._options = CacheConfig.from_kwargs(cache_options)
            try:
                hash(self._options)
                self._options_key = self._options
            except TypeError:
                self._options_key = object()  # unhashable option values: a cache of its own
        self._use_lease = False
        if cache_instance is not None:
            self._use_lease = self._lease_wanted(cache_instance)
        self._lock = threading.Lock()
        self._inflight: dict[str, _Flight] = {}
        self._afutures: dict[tuple[int, str], asyncio.Future[Any]] = {}
        self._hits = 0
        self._misses = 0
        self._quick_runs = 0  # computations in a row that took under _QUICK_S
        self._keyer = self._build_keyer()
        _live.add(self)

    # ---------------------------------------------------------- signature

    def _setup_signature(self, func: Callable[..., Any], ignore: tuple[str, ...]) -> None:
        P_ = inspect.Parameter
        try:
            sig = inspect.signature(func)  # through functools.wraps, to the function wrapped
            own = inspect.signature(func, follow_wrapped=False)
        except (TypeError, ValueError) as exc:
            raise CacheConfigError(f"cannot read the signature of {func!r}: {exc}") from None
        if own != sig and {p.kind for p in own.parameters.values()} != {
            P_.VAR_POSITIONAL,
            P_.VAR_KEYWORD,
        }:
            # A wrapper of its own shape (one adding timeout=, say) takes calls the
            # wrapped function would refuse: its signature is the one calls go through.
            sig = own
        params = list(sig.parameters.values())
        self._sig = sig
        self._names = tuple(p.name for p in params)
        self._fingerprint: tuple[Any, ...] = tuple((p.name, int(p.kind)) for p in params)
        kinds = {p.kind for p in params}
        self._simple = P_.VAR_POSITIONAL not in kinds and P_.VAR_KEYWORD not in kinds
        self._n_pos = sum(
            1 for p in params if p.kind in (P_.POSITIONAL_ONLY, P_.POSITIONAL_OR_KEYWORD)
        )
        # f(a, b) with exactly every parameter given positionally needs no binding at all.
        self._n_fast = len(params) if self._simple and self._n_pos == len(params) else -1
        self._defaults = tuple(p.default for p in params)
        self._kw_index = {
            p.name: i
            for i, p in enumerate(params)
            if p.kind in (P_.POSITIONAL_OR_KEYWORD, P_.KEYWORD_ONLY)
        }
        varkw = next((i for i, p in enumerate(params) if p.kind is P_.VAR_KEYWORD), None)
        drop: set[int] = set()
        self._drop_kw: frozenset[str] = frozenset()
        extra = []
        for name in ignore:
            if not isinstance(name, str):
                raise CacheConfigError(f"ignore= takes parameter names, not {name!r}")
            if name in self._names:
                drop.add(self._names.index(name))
            elif varkw is not None:
                extra.append(name)  # a name that arrives through **kwargs
            else:
                raise unknown_option(
                    name, list(self._names), f"{func.__qualname__}() parameter (ignore=)"
                )
        self._drop_kw = frozenset(extra)
        self._varkw = varkw
        self._keep: tuple[int, ...] | None = (
            None
            if not drop and not extra
            else tuple(i for i in range(len(params)) if i not in drop)
        )
        if self._keep is not None:
            kept = [self._fingerprint[i] for i in self._keep]
            self._fingerprint = (*kept, ("ignored", tuple(sorted(extra))))

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call's value of every parameter, in signature order, defaults filled in."""
        if self._simple and len(args) <= self._n_pos:
            vals = list(args)
            vals.extend(self._defaults[len(args) :])
            ok = True
            if kwargs:
                start = len(args)
                index = self._kw_index
                for k, v in kwargs.items():
                    i = index.get(k)
                    if i is None or i < start:
                        ok = False  # unknown, positional-only or given twice: let bind() say
                        break
                    vals[i] = v
            if ok:
                for v in vals:
                    if v is _REQUIRED:
                        ok = False
                        break
            if ok:
                return vals
        # *args/**kwargs, or a call that is wrong: bind() normalises it (or raises the
        # TypeError the call itself would raise).
        bound = self._sig.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        return [arguments[name] for name in self._names]

    def _encode(self, value: Any, name: str) -> bytes:
        try:
            return _Encoder().encode(value)
        except _Unkeyable as exc:
            hint = (
                " (an instance is keyed by its state, as pickle sees it)"
                if name in ("self", "cls")
                else ""
            )
            raise CacheKeyError(
                f"argument {name!r} of {self._identity}() cannot be part of the cache key: "
                f"{exc}{hint}. Pass a JSON-like value, an array/frame, a Path, a dataclass or a "
                f"picklable object, leave it out with ignore=({name!r},), or compute the key "
                "with key_func=..."
            ) from exc.__cause__
        except RecursionError:
            raise CacheKeyError(
                f"argument {name!r} of {self._identity}() is nested too deeply to be part of "
                f"the cache key; leave it out with ignore=({name!r},)"
            ) from None

    def _encode_all(self, vals: Any, names: tuple[str, ...]) -> bytes:
        """The slow path of a key: every value through the full encoder, errors naming
        their argument."""
        parts = [self._header]
        for v, name in zip(vals, names, strict=True):
            enc = _SIMPLE.get(type(v))
            parts.append(enc(v) if enc is not None else self._encode(v, name))
        return b"".join(parts)

    def _build_keyer(self) -> Callable[[tuple[Any, ...], dict[str, Any]], str]:
        """``keyer(args, kwargs) -> key``, specialised for this function: the hit path."""
        prefix, header, hexdigest = self._prefix, self._header, xxhash.xxh3_128_hexdigest
        key_func = self._key_func
        if key_func is not None:

            def keyer_func(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
                value = self._encode(key_func(*args, **kwargs), "key_func result")
                return prefix + hexdigest(header + value)

            return keyer_func
        n_fast, bind, keep, varkw, drop_kw = (
            self._n_fast,
            self._bind,
            self._keep,
            self._varkw,
            self._drop_kw,
        )
        names = self._names if keep is None else tuple(self._names[i] for i in keep)
        kw_pos = keep.index(varkw) if keep and drop_kw and varkw in keep else None
        simple, memo, encode_all = _SIMPLE, _MEMO, self._encode_all

        def keyer(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            vals: Any = args if not kwargs and len(args) == n_fast else bind(args, kwargs)
            if keep is not None:
                vals = [vals[i] for i in keep]
                if kw_pos is not None:
                    vals[kw_pos] = {k: x for k, x in vals[kw_pos].items() if k not in drop_kw}
            if len(vals) > 4:
                return prefix + hexdigest(encode_all(vals, names))
            b = header
            for v in vals:
                t = type(v)
                if t is int or (t is str and len(v) <= 256):
                    e = memo.get(v)
                    if e is None:
                        e = simple[t](v)
                        if len(memo) >= _MEMO_MAX:
                            memo.clear()
                        memo[v] = e
                else:
                    enc = simple.get(t)
                    if enc is None:
                        return prefix + hexdigest(encode_all(vals, names))
                    e = enc(v)
                b += e
            return prefix + hexdigest(b)

        return keyer

    def _make_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        return self._keyer(args, kwargs)

    # -------------------------------------------------------------- cache

    def _lease_wanted(self, cache: UnifiedCache) -> bool:
        # An in-memory cache lives in one process: threads are all there is to coordinate.
        return self._lease_ttl is not None and cache.config.metadata_backend != "memory"

    def _resolve(self) -> UnifiedCache:
        if self._instance is not None:
            return self._instance  # a closed one says so on use
        with self._lock:
            cache = self._cache
            if cache is not None and not cache._closed:
                return cache
            if self._options is not None:
                if self._finalizer is not None:
                    self._finalizer.detach()
                    _owned.release(self._options_key)
                cache = _owned.acquire(self._options_key, self._options)
                self._finalizer = weakref.finalize(self, _owned.release, self._options_key)
            else:
                from cacheness._global import get_cache

                cache = get_cache()
            self._use_lease = self._lease_wanted(cache)
            self._cache = cache
            return cache

    @property
    def cache(self) -> UnifiedCache:
        """The cache this function's results go to (opened now if need be)."""
        cache = self._cache
        return cache if cache is not None and not cache._closed else self._resolve()

    # --------------------------------------------------------------- call

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = self._keyer(args, kwargs)
        cache = self._cache
        if cache is None or cache._closed:
            cache = self._resolve()
        value = cache.get(cache_key=key, default=_MISS)
        if value is not _MISS:
            self._hits += 1
            return value  # type: ignore[no-any-return, unused-ignore]
        return self._compute(cache, key, args, kwargs)  # type: ignore[no-any-return, unused-ignore]

    def _cached_value(self, cache: UnifiedCache, key: str) -> Any:
        """The stored value, without counting a cache miss when there is none."""
        if not cache.exists(cache_key=key):
            return _MISS
        return cache.get(cache_key=key, default=_MISS)

    def _compute(
        self, cache: UnifiedCache, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        me = threading.get_ident()
        while True:
            with self._lock:
                flight = self._inflight.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._inflight[key] = _Flight(me)
            if leader:
                break
            if flight.thread == me:
                # The body calls itself with the same arguments: waiting would deadlock.
                return self._run(cache, key, args, kwargs)
            flight.event.wait()
            if flight.ok:
                self._hits += 1
                return flight.value
            # The computation we waited for failed; try ourselves (exceptions are not shared).
            value = self._cached_value(cache, key)
            if value is not _MISS:
                self._hits += 1
                return value
        try:
            value = self._lead(cache, key, args, kwargs)
            flight.value = value
            flight.ok = True
            return value
        finally:
            with self._lock:
                if self._inflight.get(key) is flight:
                    del self._inflight[key]
            flight.event.set()

    def _lead(
        self, cache: UnifiedCache, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not self._use_lease or self._quick_runs >= _QUICK_RUNS:
            return self._run(cache, key, args, kwargs)
        lease = _Lease(self, cache, key)
        delay = _POLL_MIN
        while (got := lease.take()) is _MISS:
            # Another process computes this key: wait for its result, or its lease to expire.
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
        if got is not _LEASED:
            return got
        with lease:
            self._misses += 1
            t0 = time.perf_counter()
            result = self._func(*args, **kwargs)
            self._timed(time.perf_counter() - t0)
            return lease.store(result)

    def _timed(self, seconds: float) -> None:
        """Count a computation that took ``seconds`` towards running without a lease."""
        self._quick_runs = self._quick_runs + 1 if seconds < _QUICK_S else 0

    def _run(
        self, cache: UnifiedCache, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self._misses += 1
        t0 = time.perf_counter()
        result = self._func(*args, **kwargs)
        self._timed(time.perf_counter() - t0)
        self._store(cache, key, result)
        return result

    def _store(
        self, cache: UnifiedCache, key: str, result: Any, lease: tuple[str, str] | None = None
    ) -> bool:
        """Cache ``result`` (if ``condition`` wants it); True when ``lease`` was released
        in the put's own transaction."""
        if self._condition is not None and not self._condition(result):
            return False
        try:
            return cache._put(
                result, {}, cache_key=key, remember=True, lease=lease, **self._put_kwargs
            )[1]
        except CacheSerializationError as exc:
            # The caller still gets its result; only the next call pays again.
            logger.warning("result of %s() was not cached: %s (key %s)", self._identity, exc, key)
            return False

    # -------------------------------------------------------------- extras

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The key of this call: ``f.cache.get(cache_key=f.cache_key(...))`` reads its entry."""
        return self._make_key(args, kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Remove the entry of this call; False when there was none."""
        return self.cache.invalidate(cache_key=self._make_key(args, kwargs))

    def cache_info(self) -> CacheInfo:
        """``(hits, misses, maxsize, currsize)``, like ``functools.lru_cache``; ``currsize``
        counts this function's entries of every ``version`` (the version is hashed into
        each key, so older versions' entries stay until ``cache_clear`` or eviction)."""
        cache = self.cache
        return CacheInfo(
            self._hits,
            self._misses,
            cache.config.max_entries,
            cache._count_prefix(self._prefix),
        )

    def cache_clear(self) -> int:
        """Remove this function's entries (every version's) and reset ``cache_info``
        counters; return how many entries were removed."""
        n = self.cache._delete_prefix(self._prefix)
        self._hits = self._misses = 0
        return n

    # ------------------------------------------------------------ binding

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundCached(self, instance)

    def __reduce__(self) -> str:
        # Pickled by reference, like the function it replaces.
        return self._qualname

    def __repr__(self) -> str:
        return f"<cached {self._identity}>"


class _AsyncCachedFunction(CachedFunction[P, R]):
    """``@cached`` on an ``async def``: awaited results are cached; concurrent awaits of
    one missing key (in one event loop) run the body once."""

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:  # type: ignore[override]
        key = self._keyer(args, kwargs)
        cache = self._cache
        if cache is None or cache._closed:
            cache = self._resolve()
        value = cache.get(cache_key=key, default=_MISS)
        if value is not _MISS:
            self._hits += 1
            return value
        return await self._acompute(cache, key, args, kwargs)

    async def _acompute(
        self, cache: UnifiedCache, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        import asyncio  # only for coroutine functions: keeps ``import cacheness`` lighter

        loop = asyncio.get_running_loop()
        fkey = (id(loop), key)
        while True:
            with self._lock:
                fut = self._afutures.get(fkey)
                leader = fut is None
                if fut is None:
                    fut = self._afutures[fkey] = loop.create_future()
            if leader:
                break
            if fkey in _computing.get():
                # The body (or a task it started) awaits itself with the same arguments:
                # waiting for our own result would never end.
                return await self._arun(cache, key, args, kwargs)
            got = await asyncio.shield(fut)
            if got is not _RETRY:
                self._hits += 1
                return got
            value = self._cached_value(cache, key)
            if value is not _MISS:
                self._hits += 1
                return value
        token = _computing.set(_computing.get() | {fkey})
        try:
            value = await self._alead(cache, key, args, kwargs)
        except BaseException:
            fut.set_result(_RETRY)  # a result, not an exception: nobody must retrieve it
            raise
        else:
            fut.set_result(value)
            return value
        finally:
            _computing.reset(token)
            with self._lock:
                if self._afutures.get(fkey) is fut:
                    del self._afutures[fkey]

    async def _alead(
        self, cache: UnifiedCache, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not self._use_lease or self._quick_runs >= _QUICK_RUNS:
            return await self._arun(cache, key, args, kwargs)
        import asyncio

        lease = _Lease(self, cache, key)
        delay = _POLL_MIN
        while (got := lease.take()) is _MISS:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
        if got is not _LEASED:
            return got
        with lease:
            self._misses += 1
            t0 = time.perf_counter()
            coro: Awaitable[Any] = self._func(*args, **kwargs)
            result = await coro
            self._timed(time.perf_counter() - t0)  # wall time: other tasks' turns count too
            return lease.store(result)

    async def _arun(
        self, cache: UnifiedCache, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self._misses += 1
        t0 = time.perf_counter()
        coro: Awaitable[Any] = self._func(*args, **kwargs)
        result = await coro
        self._timed(time.perf_counter() - t0)
        self._store(cache, key, result)
        return result


# The (event loop, key) pairs the current task computes, inherited by the tasks it
# starts: an await of one of them from inside runs the body instead of waiting.
_computing: contextvars.ContextVar[frozenset[tuple[int, str]]] = contextvars.ContextVar(
    "cacheness_computing", default=frozenset()
)

# Every decorated function, so that a forked child can drop its parent's in-flight state
# (a computation running in another thread of the parent never finishes in the child).
_live: weakref.WeakSet[CachedFunction[Any, Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for func in list(_live):
        func._lock = threading.Lock()
        func._inflight = {}
        func._afutures = {}
    _keeper.lock = threading.Lock()
    _keeper.wake = threading.Condition(_keeper.lock)
    _keeper.held = {}
    _keeper.thread = None
    _owned.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _BoundCached:
    # ``obj.method`` of a cached method: calls and keys include ``obj``. No class
    # docstring: ``__doc__`` is the method's, as for a plain bound method.

    __slots__ = ("__func__", "__self__")

    def __init__(self, func: CachedFunction[..., Any], instance: Any) -> None:
        self.__func__ = func
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(self.__self__, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self.__func__.cache_key(self.__self__, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        return self.__func__.invalidate(self.__self__, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("__func__", "__self__"):
            raise AttributeError(name)  # unset slots (mid-unpickling): never recurse
        return getattr(self.__func__, name)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.__func__.__doc__

    @property
    def __signature__(self) -> inspect.Signature:
        # The method's, without its first parameter (``self`` or ``cls``).
        sig = inspect.signature(self.__func__.__wrapped__)
        return sig.replace(parameters=list(sig.parameters.values())[1:])

    def __reduce__(self) -> tuple[Any, ...]:
        # Looked up again on the instance (or class): pickles as ``obj.method`` does.
        return getattr, (self.__self__, self.__func__.__wrapped__.__name__)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _BoundCached)
            and other.__func__ is self.__func__
            and other.__self__ is self.__self__
        )

    def __hash__(self) -> int:
        return hash((id(self.__func__), id(self.__self__)))

    def __repr__(self) -> str:
        return f"<bound {self.__func__!r} of {self.__self__!r}>"
