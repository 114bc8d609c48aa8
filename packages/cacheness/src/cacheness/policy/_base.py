"""The cache index interface: key -> (stored entry, expiry, access data), plus
counters and leases, and the eviction orders of the policies.

The storage layer keeps values and deduplicates content; the index keeps the
caching semantics (TTL, limits, which entry goes first, statistics). One row
per cache key names the store entry holding its value (``store_key``, unique
per put, so an eviction in one process never deletes what another process has
just written under the same cache key). On the shared SQLite index a small
value can live in its row instead, with a store key no store entry can have
(``is_held``).

Counters (entries, deduplicated bytes, hits, misses, evictions, expirations)
live in the index and change in the same transaction as the rows they
count, so every process sharing the directory sees the same totals.

A generation number goes up with every write that changes or removes an
existing row (the SQLite index skips it for a put of a new key: no memory
tier can hold that key, so nothing it holds goes stale). Besides its durable
copy in the index it is mirrored into an 8-byte memory-mapped file, which the
in-process memory tier reads (~0.1 µs) on each hit to learn whether any
process has written since it last checked. The file is raised only once the
write has committed (:meth:`CacheIndex.publish`), and never lowered: a reader
that saw the new number and then the old row would mark a stale value current.
"""

from __future__ import annotations

import dataclasses
import fcntl
import mmap
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from cacheness.storage.abc import EntryRecord

__all__ = [
    "COUNTERS",
    "HELD_MARK",
    "POLICY_ORDER",
    "ROW_FIELDS",
    "CacheIndex",
    "Generation",
    "IndexRow",
    "Limits",
    "Pending",
    "PutResult",
    "filter_matches",
    "is_held",
]


COUNTERS = ("hits", "misses", "evictions", "expired", "entries", "size_bytes")

#: ORDER BY of each eviction policy: the first row is the first victim.
POLICY_ORDER: dict[str, tuple[str, ...]] = {
    "lru": ("accessed", "key"),
    "lfu": ("hits", "accessed", "key"),
    "fifo": ("created", "key"),
}


@dataclasses.dataclass(slots=True)
class IndexRow:
    key: str
    store_key: str
    content_hash: str
    size: int
    created: float
    accessed: float
    hits: int
    expires: float | None
    key_params: dict[str, Any] | None
    description: str | None
    metadata: dict[str, Any]
    #: The value lives in the store's metadata row (not shared with other entries).
    inline: bool = False
    #: A small value held in the index row itself, with no store entry (SharedSqliteIndex).
    held: EntryRecord | None = None


#: Store keys of values held in the index row start with NUL, which no store key holds.
HELD_MARK = "\x00"


def is_held(store_key: str) -> bool:
    """True for the store key of a value held in its index row (nothing in the store)."""
    return store_key[:1] == HELD_MARK


#: The columns an index stores per entry, in order (``inline`` is derived by the SQLite index).
ROW_FIELDS: tuple[str, ...] = (
    "key",
    "store_key",
    "content_hash",
    "size",
    "created",
    "accessed",
    "hits",
    "expires",
    "key_params",
    "description",
    "metadata",
)


@dataclasses.dataclass(slots=True)
class Limits:
    max_entries: int | None
    max_bytes: int | None
    policy: str


@dataclasses.dataclass(slots=True)
class PutResult:
    replaced: str | None  # store key of the value this put replaced
    victims: list[str]  # store keys of evicted entries
    oversized: bool = False  # the new entry alone is over the size limit
    #: The generation the put committed at, read inside its transaction (None: unknown).
    #: The new row is current at this generation: any later change to it bumps it.
    generation: int | None = None


# (hits added, last access time) per key, and counter increments, waiting to be written.
Pending = tuple[dict[str, list[float]], dict[str, int]]


_GENERATIONS: weakref.WeakSet[Generation] = weakref.WeakSet()


def _generations_after_fork() -> None:
    for generation in list(_GENERATIONS):
        generation._after_fork_in_child()


os.register_at_fork(after_in_child=_generations_after_fork)


class Generation:
    """A counter shared by the processes on one machine through a memory-mapped file.

    Without a path it is a plain in-process integer (memory backend). The
    eight bytes are read through a native-order memoryview (a third of the
    cost of a struct unpack, and read on every memory-tier hit); the value is
    only ever compared for change, so byte order does not matter.
    """

    def __init__(self, path: Path | None) -> None:
        self._value = 0  # DbGeneration's copy of the last generation it wrote
        self._path = path
        self._mm = None if path is None else self._map(path)
        self._view = memoryview(bytearray(8) if self._mm is None else self._mm).cast("Q")
        self._closed = False
        self._lock = threading.Lock()
        self._lock_fd = -1  # for publish's flock, opened on first use
        self._lock_pid = -1
        _GENERATIONS.add(self)

    @staticmethod
    def _map(path: Path) -> mmap.mmap:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            return mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    def reopen(self) -> None:
        """Map the file at the path again (it was deleted or replaced: the old mapping
        is no longer shared with other processes)."""
        if self._path is not None and not self._closed:
            # The old mapping is dropped, not closed: another thread may be reading it.
            mm = self._map(self._path)
            self._mm, self._view = mm, memoryview(mm).cast("Q")
            with self._lock:  # publish's flock must be taken on the new file
                if self._lock_pid == os.getpid():
                    os.close(self._lock_fd)
                self._lock_pid = -1

    def _after_fork_in_child(self) -> None:
        # A parent's thread may have held the lock at the fork; the descriptor is the
        # parent's open file (closing the child's copy leaves the parent's flock).
        self._lock = threading.Lock()
        if self._lock_pid != -1:
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
            self._lock_pid = -1

    def read(self) -> int:
        return self._view[0]

    def write(self, value: int) -> None:
        if not self._closed:
            self._view[0] = value

    def publish(self, value: int) -> None:
        """Raise the counter to ``value``; never lower it. Writers publish after their
        commits, in any order: an older number written last would hide a newer write
        from every memory tier, so the check and the store hold a lock (an ``flock``
        on the file, across processes, and a thread lock, as ``flock`` is per open
        file and every thread here shares one)."""
        if self._closed or value <= self._view[0]:
            return
        with self._lock:
            if self._closed:
                return
            if self._path is None:
                self._view[0] = max(self._view[0], value)
                return
            if self._lock_pid != os.getpid():
                # A descriptor of its own per process: a forked child sharing its
                # parent's open file would share its flock too.
                self._lock_fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
                self._lock_pid = os.getpid()
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                if value > self._view[0]:
                    self._view[0] = value
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with self._lock:
                if self._lock_pid == os.getpid():
                    os.close(self._lock_fd)
                self._lock_pid = -1
            if self._mm is not None:
                self._view.release()  # an exported buffer keeps mmap.close() from working
                self._mm.close()


class CacheIndex(ABC):
    """What the cache needs from its index. Every ``now`` is seconds since the epoch."""

    name: ClassVar[str] = ""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        # The generation each thread's write transaction reached, by thread, published
        # once it has committed (the shared SQLite index's puts commit inside the
        # store's). Most writes (new keys) reach none: publish() then only finds the
        # dict empty. Setting and popping one key is atomic: no lock (none to be left
        # held across a fork).
        self._unpublished: dict[int, int] = {}

    def _reached(self, generation: int) -> None:
        """Note that the write transaction in progress moves the generation to this."""
        me = threading.get_ident()
        if generation > self._unpublished.get(me, 0):
            self._unpublished[me] = generation

    def _forget_reached(self) -> None:
        """The write transaction rolled back: nothing of it is to be published."""
        if self._unpublished:
            self._unpublished.pop(threading.get_ident(), None)

    def publish(self) -> None:
        """Publish the generation this thread's committed writes reached (see the
        module docstring); the cache calls it after every write, a no-op when none
        is waiting."""
        if self._unpublished:
            value = self._unpublished.pop(threading.get_ident(), 0)
            if value:
                self.generation.publish(value)

    @abstractmethod
    def lookup(self, key: str) -> tuple[str, float | None] | None:
        """``(store_key, expires)`` of ``key``, or None. The hot path."""

    @abstractmethod
    def row(self, key: str) -> IndexRow | None: ...

    @abstractmethod
    def rows(self, prefix: str | None = None) -> list[IndexRow]: ...

    @abstractmethod
    def put(self, row: IndexRow, limits: Limits, take_pending: Callable[[], Pending]) -> PutResult:
        """Insert or replace ``row``, then evict to fit ``limits``. ``take_pending()``
        hands over the reads counted in memory (see :meth:`flush`); an index calls it
        at the latest before choosing victims, so the eviction order counts them."""

    @abstractmethod
    def replace_value(
        self,
        key: str,
        store_key: str,
        content_hash: str,
        size: int,
        now: float,
        limits: Limits,
        take_pending: Callable[[], Pending],
    ) -> PutResult | None:
        """Point ``key`` at a new value keeping its expiry and parameters, then evict to
        fit ``limits`` as :meth:`put` does; None when ``key`` has no row. The result's
        ``replaced`` is the old store key."""

    @abstractmethod
    def remove(
        self, key: str, store_key: str | None = None, counter: str | None = None
    ) -> str | None:
        """Delete ``key`` (only if it still names ``store_key`` when given), bump ``counter``;
        return the removed row's store key."""

    @abstractmethod
    def touch(self, key: str, expires: float | None, now: float) -> bool: ...

    @abstractmethod
    def flush(self, pending: Pending) -> None: ...

    @abstractmethod
    def sweep_expired(self, now: float) -> list[str]:
        """Remove every expired row (counted as ``expired``); their store keys."""

    @abstractmethod
    def clear(self, prefix: str | None = None) -> list[str]:
        """Remove every row (whose key starts with ``prefix``); their store keys."""

    @abstractmethod
    def counters(self) -> dict[str, int]: ...

    @abstractmethod
    def store_keys(self) -> set[str]: ...

    @abstractmethod
    def acquire_lease(self, name: str, owner: str, ttl: float, now: float) -> bool:
        """Take (or renew) the lease ``name`` for ``owner`` unless another owner holds
        an unexpired one."""

    @abstractmethod
    def release_lease(self, name: str, owner: str) -> bool: ...

    def close(self) -> None:
        self.generation.close()


def filter_matches(row: IndexRow, filters: Mapping[str, Any]) -> bool:
    """Equality on key parameters or user metadata, as ``list_entries(**filters)`` promises."""
    params = row.key_params or {}
    for name, want in filters.items():
        found = False
        for source in (params, row.metadata):
            if name in source and _same(source[name], want):
                found = True
                break
        if not found:
            return False
    return True


def _same(have: Any, want: Any) -> bool:
    # JSON turns tuples into lists; 1, 1.0 and True must still differ.
    if isinstance(want, tuple):
        want = list(want)
    return type(have) is type(want) and bool(have == want)
