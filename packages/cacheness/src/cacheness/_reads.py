"""Reads counted in memory (hits, misses, access times) until they reach the index.

A get must not write: one SQLite write per read would cost more than the read.
Each read is one list append (atomic under the GIL, and per list on
free-threaded builds), so a get takes no lock. Every ``BATCH`` reads are summed
per key; the sums are written when ``access_flush_seconds`` have passed or
``BATCH`` distinct keys wait. A write adds a row per key read to the SQLite
index's cache_access table, so reads repeating keys (a hot set, the memory tier)
write once a second, not once per batch; distinct keys still write every
``BATCH`` reads.

A write found due by a read is made by a thread of its own (write-behind): on a
1,000,000-entry index 4096 keys take 0.12 to 0.16 s to write, which the read that
found them due would otherwise wait for. A failed write keeps its sums. One such write runs at a time; reads meanwhile keep
summing. ``flush`` (stats, close, listing) and ``settle`` (metadata) wait for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Final

from cacheness.policy import Pending

__all__ = ["BATCH", "ReadLog"]

logger = logging.getLogger(__name__)

BATCH: Final = 4096
# What take() hands over when nothing waits: indexes only read (or clear) it.
_NOTHING: Final[Pending] = ({}, {})


_LOGS: weakref.WeakSet[ReadLog] = weakref.WeakSet()


def _before_fork() -> None:
    # No write-behind of ours is inside SQLite when the process forks: the child
    # closes the connections it inherits, and one in use by a vanished thread would
    # hold SQLite's lock on it for good.
    for log in list(_LOGS):
        writer = log._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=5.0)


def _after_fork_in_child() -> None:
    for log in list(_LOGS):
        log._forget()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


class ReadLog:
    """The reads of one cache object not yet written; ``write(pending)`` writes them."""

    def __init__(self, flush_seconds: float, write: Callable[[Pending], None]) -> None:
        # Reads since the last fold, in order: (key, time) per hit, None per miss.
        self._reads: list[tuple[str, float] | None] = []
        self._lock = threading.Lock()  # guards the sums below; one fold at a time
        # Reads taken from self._reads and summed: key -> [hits, last access],
        # and the hit and miss counts.
        self._summed: dict[str, list[float]] = {}
        self._summed_hits = 0
        self._summed_misses = 0
        self._flush_s = flush_seconds
        self._flush_at = time.monotonic() + flush_seconds  # reads are written by then
        self._write = write
        self._writer: threading.Thread | None = None  # the write-behind in progress
        self._inflight: Pending = _NOTHING  # what it writes
        _LOGS.add(self)

    def _forget(self) -> None:
        """In a forked child: the reads counted so far are the parent's, which writes
        them; the child counts only its own (and has no write-behind thread)."""
        self._lock = threading.Lock()  # a parent's thread may have held it at the fork
        del self._reads[:]
        self._summed = {}
        self._summed_hits = self._summed_misses = 0
        self._writer = None
        self._inflight = _NOTHING
        self._flush_at = time.monotonic() + self._flush_s

    def hit(self, key: str, now: float) -> None:
        reads = self._reads
        reads.append((key, now))
        if len(reads) >= BATCH or time.monotonic() >= self._flush_at:
            self._due()

    def miss(self) -> None:
        reads = self._reads
        reads.append(None)
        if len(reads) >= BATCH or time.monotonic() >= self._flush_at:
            self._due()

    def add_miss(self) -> None:
        """Count a miss, written with the next flush (never writes now)."""
        self._reads.append(None)

    def _due(self) -> None:
        """Sum the reads waiting in the list; write the sums if they are due."""
        if time.monotonic() < self._flush_at:
            with self._lock:
                self._fold()
                if len(self._summed) < BATCH:
                    return
        self._write_behind()

    def _write_behind(self) -> None:
        """Hand what waits to a thread that writes it, unless one is still writing
        (then it waits for the next read that finds it due)."""
        with self._lock:
            if self._writer is not None:
                return
            pending = self._take()
            if pending is _NOTHING:
                return
            self._inflight = pending
            writer = self._writer = threading.Thread(
                target=self._write_inflight, name="cacheness-read-log", daemon=True
            )
        try:
            writer.start()
        except RuntimeError:  # no new threads (interpreter shutdown): write it here
            self._write_inflight()

    def _write_inflight(self) -> None:
        pending = self._inflight
        # The index empties the dicts it wrote; a failure after that keeps the copies.
        kept = (dict(pending[0]), dict(pending[1]))
        try:
            self._write(pending)
        except Exception as exc:  # noqa: BLE001 - no caller to raise to: keep them
            logger.warning("access data not written (%s); kept for the next write", exc)
            with self._lock:
                self._restore(kept)
        finally:
            self._inflight = _NOTHING
            self._writer = None

    def _restore(self, pending: Pending) -> None:
        """Put back sums a failed write took (``self._lock`` held)."""
        access, counts = pending
        for key, (hits, at) in access.items():
            a = self._summed.get(key)
            if a is None:
                self._summed[key] = [hits, at]
            else:
                a[0] += hits
                a[1] = max(a[1], at)
        self._summed_hits += counts.get("hits", 0)
        self._summed_misses += counts.get("misses", 0)

    def settle(self) -> None:
        """Wait for the write-behind in progress, if any: what it writes is then in
        the index, and none of it is counted as pending any more."""
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()

    def _fold(self) -> None:
        """Move the reads in ``self._reads`` into the sums (``self._lock`` held)."""
        reads = self._reads
        n = len(reads)
        if not n:
            return
        batch = reads[:n]
        # Only the first n go: a read another thread appends meanwhile stays
        # for the next fold (self._reads is never replaced, so none is lost).
        del reads[:n]
        access = self._summed
        misses = 0
        for read in batch:
            if read is None:
                misses += 1
                continue
            key, at = read
            a = access.get(key)
            if a is None:
                access[key] = [1, at]
            else:
                a[0] += 1
                a[1] = at
        self._summed_hits += n - misses
        self._summed_misses += misses

    def take(self) -> Pending:
        """Every read not yet written, summed; the caller writes them."""
        if not self._reads and not (self._summed_hits or self._summed_misses):
            return _NOTHING  # the usual put: nothing waits, no lock taken
        with self._lock:
            return self._take()

    def _take(self) -> Pending:
        """``take`` with ``self._lock`` held."""
        self._fold()
        access, hits, misses = self._summed, self._summed_hits, self._summed_misses
        self._flush_at = time.monotonic() + self._flush_s
        if not (access or hits or misses):
            return _NOTHING
        self._summed = {}
        self._summed_hits = self._summed_misses = 0
        return access, {"hits": hits, "misses": misses}

    def flush(self) -> None:
        """Write every read not yet written, now (after the write-behind, if any).
        A failed write raises, and keeps the reads for the next one."""
        self.settle()
        pending = self.take()
        if pending is _NOTHING:
            return
        kept = (dict(pending[0]), dict(pending[1]))
        try:
            self._write(pending)
        except BaseException:
            with self._lock:
                self._restore(kept)
            raise

    def pending_counts(self) -> tuple[int, int]:
        """(hits, misses) counted and not yet written."""
        with self._lock:
            self._fold()
            return self._summed_hits, self._summed_misses

    def pending_hits(self, key: str) -> int:
        """Hits of ``key`` counted and not yet written."""
        with self._lock:  # no fold between the two counts: none is counted twice or missed
            summed = self._summed.get(key)
            n = 0 if summed is None else int(summed[0])
            inflight = self._inflight[0].get(key)
            n += 0 if inflight is None else int(inflight[0])
            reads = self._reads.copy()
        return n + sum(1 for read in reads if read is not None and read[0] == key)
