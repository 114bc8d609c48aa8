"""When the reads counted in memory (hits, access times) reach the SQLite index.

A put leaves them waiting unless it evicts, so the write lock is not held to
rewrite the rows of the reads before it; an evicting put writes them first, so
the victims are chosen by up-to-date access data.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from cacheness import cacheness
from cacheness.policy import Pending

from .conftest import Clock


def _hits(root: Path) -> dict[str, int]:
    """Hits written to the file: in the entry's row, and those waiting in cache_access."""
    with closing(sqlite3.connect(root / "metadata.sqlite")) as conn:
        return dict(
            conn.execute(
                "SELECT e.key, e.hits + coalesce(a.hits, 0) FROM cache_entries AS e "
                "LEFT JOIN cache_access AS a ON a.kid = e.rowid"
            ).fetchall()
        )


def test_a_put_that_evicts_nothing_leaves_reads_waiting(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path, access_flush_seconds=3600) as cache:
        a = cache.put("a", item="a")
        for _ in range(3):
            assert cache.get(item="a") == "a"
        cache.put("b", item="b")
        assert _hits(tmp_path)[a] == 0  # still in memory
        assert cache.stats()["hits"] == 3  # stats() writes them
        assert _hits(tmp_path)[a] == 3


def test_a_put_that_evicts_writes_reads_first(tmp_path: Path, clock: Clock) -> None:
    with cacheness(cache_dir=tmp_path, access_flush_seconds=3600, max_entries=2) as cache:
        cache._clock = clock
        a = cache.put("a", item="a")
        clock.advance(1)
        cache.put("b", item="b")
        clock.advance(1)
        assert cache.get(item="a") == "a"  # a is now the most recently used
        clock.advance(1)
        cache.put("c", item="c")  # evicts b, not a
        assert {e["key_params"]["item"] for e in cache.list_entries()} == {"a", "c"}
        assert _hits(tmp_path)[a] == 1


def test_metadata_counts_the_hits_still_in_memory(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path, access_flush_seconds=3600) as cache:
        a = cache.put("a", item="a")
        cache.put("b", item="b")
        for _ in range(3):
            assert cache.get(item="a") == "a"
        assert cache.get(item="b") == "b"
        assert cache.get(item="nope") is None
        assert _hits(tmp_path)[a] == 0
        meta = cache.get_metadata(item="a")
        assert meta is not None and meta["hits"] == 3
        got = cache.get_with_metadata(item="a")
        assert got is not None and got[1]["hits"] == 4  # this read included
        s = cache.stats()
        assert (s["hits"], s["misses"]) == (5, 1)
        assert _hits(tmp_path)[a] == 4


@pytest.mark.parametrize("flush_seconds", [0.0, 3600.0])
def test_reads_from_many_threads_are_all_counted(tmp_path: Path, flush_seconds: float) -> None:
    # flush_seconds=0: every read writes what waits, so the flushes race the
    # threads' reads; 3600: the reads are summed every 4096 and written by stats().
    threads, reads = 4, 2500
    with cacheness(cache_dir=tmp_path, access_flush_seconds=flush_seconds) as cache:
        keys = {name: cache.put(name, item=name) for name in ("a", "b", "c")}
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(reads):
                    name = "abc"[(t + i) % 3]
                    assert cache.get(item=name) == name
                    if i % 5 == 0:
                        assert cache.get(item="missing") is None
            except BaseException as exc:  # reported by the assert below
                errors.append(exc)

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        assert errors == []
        expected = Counter("abc"[(t + i) % 3] for t in range(threads) for i in range(reads))
        for name, n in expected.items():
            meta = cache.get_metadata(item=name)
            assert meta is not None and meta["hits"] == n
        s = cache.stats()
        assert s["hits"] == threads * reads
        assert s["misses"] == threads * len(range(0, reads, 5))
        on_disk = _hits(tmp_path)
        assert {name: on_disk[key] for name, key in keys.items()} == dict(expected)


def test_reads_of_a_few_keys_wait_for_the_interval(tmp_path: Path) -> None:
    # 10,000 reads of two keys are summed in memory, not written every 4096.
    with cacheness(cache_dir=tmp_path, access_flush_seconds=3600) as cache:
        a = cache.put("a", item="a")
        b = cache.put("b", item="b")
        for i in range(10_000):
            assert cache.get(item="ab"[i % 7 == 0]) == "ab"[i % 7 == 0]
        assert cache.get(item="nope") is None
        assert _hits(tmp_path) == {a: 0, b: 0}
        n_b = len(range(0, 10_000, 7))
        meta = cache.get_metadata(item="a")
        assert meta is not None and meta["hits"] == 10_000 - n_b
        s = cache.stats()
        assert (s["hits"], s["misses"]) == (10_000, 1)
        assert _hits(tmp_path) == {a: 10_000 - n_b, b: n_b}


def _eventually(check: Callable[[], bool], seconds: float = 30.0) -> bool:
    """The write-behind lands without any further call into the cache."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_reads_of_4096_distinct_keys_are_written_at_once(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path, access_flush_seconds=3600) as cache:
        keys = [cache.put(i, item=i) for i in range(4096)]
        for i in range(4095):
            assert cache.get(item=i) == i
        time.sleep(0.2)  # a write started by the reads so far would show by now
        assert sum(_hits(tmp_path).values()) == 0
        assert cache.get(item=4095) == 4095  # the 4096th distinct key
        assert _eventually(lambda: _hits(tmp_path) == dict.fromkeys(keys, 1))


def test_with_no_interval_every_read_is_written(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path, access_flush_seconds=0) as cache:
        a = cache.put("a", item="a")
        for n in (1, 2):
            assert cache.get(item="a") == "a"
            assert _eventually(lambda n=n: _hits(tmp_path)[a] == n)


def test_the_read_that_finds_a_batch_due_does_not_wait_for_its_write(tmp_path: Path) -> None:
    """Another process holds the write lock: the batch's write waits for it, the get
    that handed the batch over does not; the rows are written once the lock goes."""
    with cacheness(cache_dir=tmp_path, access_flush_seconds=3600) as cache:
        keys = [cache.put(i, item=i) for i in range(4096)]
        for i in range(4095):
            assert cache.get(item=i) == i
        locker = sqlite3.connect(tmp_path / "metadata.sqlite", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            got: list[object] = []
            reader = threading.Thread(target=lambda: got.append(cache.get(item=4095)))
            reader.start()
            reader.join(timeout=10)  # a get writing the batch itself would wait 30 s here
            assert got == [4095]
            assert sum(_hits(tmp_path).values()) == 0  # the write waits for the lock
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert _eventually(lambda: _hits(tmp_path) == dict.fromkeys(keys, 1))
        s = cache.stats()
        assert s["hits"] == 4096


def test_a_failed_write_behind_keeps_the_reads(tmp_path: Path) -> None:
    from cacheness._reads import BATCH, ReadLog

    written: list[Pending] = []
    failing = [True]

    def write(pending: Pending) -> None:
        if failing[0]:
            pending[0].clear()  # as an index does once its UPDATE ran, before COMMIT
            pending[1].clear()
            raise OSError("disk full")
        written.append(({k: list(v) for k, v in pending[0].items()}, dict(pending[1])))

    log = ReadLog(3600.0, write)
    for i in range(BATCH):
        log.hit(f"k{i}", float(i))
    log.settle()  # the write-behind failed
    assert written == [] and log.pending_hits("k7") == 1
    failing[0] = False
    log.flush()
    ((access, counts),) = written
    assert len(access) == BATCH and access["k7"] == [1, 7.0]
    assert counts == {"hits": BATCH, "misses": 0}
