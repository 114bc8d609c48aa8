"""Cross-process compute leases: taken by the process that computes a missing key,
renewed by one keeper thread while the body runs, released by the put."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from cacheness.storage.errors import CacheError

if TYPE_CHECKING:
    from cacheness._cache import UnifiedCache
    from cacheness.decorator._function import CachedFunction

__all__: list[str] = []

logger = logging.getLogger(__name__)

_MISS: Final = object()
_LEASED: Final = object()  # this process holds the lease of the key it computes


class _LeaseKeeper:
    """One daemon thread renewing the compute leases this process holds.

    A lease lives ``ttl`` seconds unless renewed; it is renewed every
    ``ttl / 3`` while its body runs, so a long computation keeps it and a
    crashed one loses it within ``ttl``.
    """

    _IDLE_EXIT_S = 10.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.held: dict[tuple[int, str, str], tuple[Any, float, float]] = {}
        self.thread: threading.Thread | None = None
        # When the waiting keeper wakes by itself: a lease due later needs no wake-up
        # (waking the thread on every miss cost ~20 µs of GIL hand-offs).
        self.wake_at = float("-inf")

    def hold(self, cache: UnifiedCache, name: str, owner: str, ttl: float) -> None:
        with self.lock:
            due = time.monotonic() + ttl / 3
            self.held[(id(cache), name, owner)] = (cache, ttl, due)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._run, name="cacheness-lease-keeper", daemon=True
                )
                self.thread.start()
            elif due < self.wake_at:
                self.wake.notify()

    def _wait(self, now: float, timeout: float) -> None:
        """Wait on ``wake`` (the lock held) for at most ``timeout`` seconds."""
        self.wake_at = now + timeout
        try:
            self.wake.wait(timeout)
        finally:
            self.wake_at = float("-inf")

    def drop(self, cache: UnifiedCache, name: str, owner: str) -> None:
        with self.lock:
            self.held.pop((id(cache), name, owner), None)

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self.lock:
                now = time.monotonic()
                if not self.held:
                    if now - idle_since >= self._IDLE_EXIT_S:
                        self.thread = None
                        return
                    self._wait(now, self._IDLE_EXIT_S)
                    continue
                due = [(k, v) for k, v in self.held.items() if v[2] <= now]
                next_due = min(v[2] for v in self.held.values())
                if not due:
                    self._wait(now, max(0.0, next_due - now))
                    continue
            for (cid, name, owner), (cache, ttl, _) in due:
                try:
                    renewed = cache._acquire_lease(name, ttl, owner)
                except CacheError as exc:
                    # The cache was closed under a running computation: nothing to keep.
                    logger.debug("lease %s not renewed: %s", name, exc)
                    renewed = False
                with self.lock:
                    key = (cid, name, owner)
                    if key in self.held:
                        if renewed:
                            self.held[key] = (cache, ttl, time.monotonic() + ttl / 3)
                        else:
                            del self.held[key]
            idle_since = time.monotonic()


_keeper = _LeaseKeeper()


def _owner_id(cache: UnifiedCache) -> str:
    # Unique per computation: two threads of one process are different owners.
    return f"{cache._owner}:{threading.get_ident()}:{os.urandom(4).hex()}"


def _release(cache: UnifiedCache, name: str, owner: str) -> None:
    if cache._closed:
        return  # the lease expires by itself
    cache._release_lease(name, owner)


class _Lease:
    """The lease a leading process holds on one key while it computes the value.

    :meth:`take` tries to get it; used as a context manager it is kept alive
    by the keeper thread, and released at the end unless the put released it.
    """

    __slots__ = ("_cache", "_fn", "_kept", "_released", "key", "name", "owner")

    def __init__(self, fn: CachedFunction[..., Any], cache: UnifiedCache, key: str) -> None:
        self._fn, self._cache, self.key = fn, cache, key
        self.name, self.owner = "cached:" + key, _owner_id(cache)
        self._kept = self._released = False

    def take(self) -> Any:
        """_LEASED once this process holds the lease and the value is still not stored;
        the value when another process stored it (counted as a hit); _MISS: poll again."""
        fn, cache = self._fn, self._cache
        assert fn._lease_ttl is not None
        leased = cache._acquire_lease(self.name, fn._lease_ttl, self.owner)
        try:
            # Leased or not, someone may have stored the value since our miss.
            value = fn._cached_value(cache, self.key)
        except BaseException:
            if leased:
                _release(cache, self.name, self.owner)
            raise
        if leased:
            if value is _MISS:
                return _LEASED
            _release(cache, self.name, self.owner)
        if value is not _MISS:
            fn._hits += 1
        return value

    def __enter__(self) -> _Lease:
        assert self._fn._lease_ttl is not None
        _keeper.hold(self._cache, self.name, self.owner, self._fn._lease_ttl)
        self._kept = True
        return self

    def store(self, result: Any) -> Any:
        """Cache ``result``, releasing the lease in the same transaction where the index
        can; ``result``."""
        self._stop_keeping()
        self._released = self._fn._store(self._cache, self.key, result, (self.name, self.owner))
        return result

    def _stop_keeping(self) -> None:
        # Before the put: a renewal landing after the put's release would re-create
        # the lease. It still has at least 2/3 of its ttl left.
        if self._kept:
            self._kept = False
            _keeper.drop(self._cache, self.name, self.owner)

    def __exit__(self, *exc: object) -> None:
        self._stop_keeping()
        if not self._released:
            _release(self._cache, self.name, self.owner)
