"""The optional in-process memory tier (``memory_cache_entries``)."""

from __future__ import annotations

import collections
import threading
from typing import Any

__all__ = ["MemoryTier"]


class MemoryTier:
    """Values of recently read keys, in this process, LRU-bounded.

    Each entry is ``[value, store_key, expires, generation]``: the store key it
    was read from and the generation it was last checked at; a hit with a newer
    generation is re-checked against the index (one lookup), so a write by any
    process is never hidden. Hits read ``entries`` without the lock (a dict
    read and ``move_to_end`` are atomic under the GIL); changes take it.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: collections.OrderedDict[str, list[Any]] = collections.OrderedDict()
        self.lock = threading.Lock()

    def put(self, key: str, value: Any, store_key: str, expires: float | None, gen: int) -> None:
        with self.lock:
            self.entries[key] = [value, store_key, expires, gen]
            self.entries.move_to_end(key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)

    def pop(self, key: str) -> None:
        with self.lock:
            self.entries.pop(key, None)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
