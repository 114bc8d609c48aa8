"""Caches the decorator opens itself: one per configuration, closed with its last user."""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING, Any

from cacheness._config import CacheConfig

if TYPE_CHECKING:
    from cacheness._cache import UnifiedCache

__all__: list[str] = []


class _OwnedCaches:
    """Caches the decorator opened itself, one per distinct configuration.

    Each decorated function using one holds a reference (released by a
    ``weakref.finalize`` when the function is garbage-collected, or at exit);
    the last release closes the cache, so decorating many functions opens one
    cache, and nothing stays open once they are gone.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.caches: dict[Any, list[Any]] = {}  # key -> [cache, users]

    def acquire(self, key: Any, config: CacheConfig) -> UnifiedCache:
        from cacheness._cache import UnifiedCache

        with self.lock:
            slot = self.caches.get(key)
            if slot is None or slot[0]._closed:
                users = 0 if slot is None else slot[1]
                slot = self.caches[key] = [UnifiedCache(config), users]
            slot[1] += 1
            return slot[0]  # type: ignore[no-any-return, unused-ignore]

    def release(self, key: Any) -> None:
        with self.lock:
            slot = self.caches.get(key)
            if slot is None:
                return
            slot[1] -= 1
            if slot[1] > 0:
                return
            del self.caches[key]
        slot[0].close()

    def close_all(self) -> None:
        with self.lock:
            slots, self.caches = list(self.caches.values()), {}
        for cache, _ in slots:
            cache.close()

    def open_count(self) -> int:
        with self.lock:
            return sum(1 for cache, _ in self.caches.values() if not cache._closed)


_owned = _OwnedCaches()
atexit.register(_owned.close_all)
