"""The process-wide cache of ``get_cache()``."""

from __future__ import annotations

import atexit
import threading
from typing import Any

from cacheness._cache import UnifiedCache
from cacheness._config import CacheConfig

__all__ = ["get_cache", "reset_cache"]

_lock = threading.Lock()
_cache: UnifiedCache | None = None


def get_cache() -> UnifiedCache:
    """The process-wide cache, created with the default configuration on first use."""
    global _cache
    with _lock:
        if _cache is None or _cache._closed:
            _cache = UnifiedCache()
        return _cache


def reset_cache(config: CacheConfig | None = None, **options: Any) -> UnifiedCache:
    """Close the process-wide cache, then make a new one from ``config`` (and/or
    ``CacheConfig`` keywords) and return it."""
    global _cache
    with _lock:
        old, _cache = _cache, None
        if old is not None:
            old.close()
        _cache = UnifiedCache(config, **options)
        return _cache


@atexit.register
def _close_at_exit() -> None:
    if _cache is not None:
        _cache.close()
