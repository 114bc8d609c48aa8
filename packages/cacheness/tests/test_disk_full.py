"""A cache on a full disk: typed errors, the old values intact, and back to work
once there is room again. The disk is the ``small_disk`` tmpfs of the root conftest."""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from cacheness import CacheBackendError, CacheStorageError, cacheness


def test_a_value_larger_than_the_free_space(small_disk: Path) -> None:
    with cacheness(cache_dir=small_disk / "c") as cache:
        cache.put({"v": 1}, item="k")
        before = cache.stats()
        big = np.random.default_rng(0).random(1_000_000)  # 8 MB that do not compress
        with pytest.raises(CacheStorageError, match="disk is full"):
            cache.put(big, item="k")
        assert cache.get(item="k") == {"v": 1}
        after = cache.stats()
        assert (after["entries"], after["size_bytes"]) == (before["entries"], before["size_bytes"])
        assert list((small_disk / "c" / "tmp").iterdir()) == []  # no partial blob left


def test_index_writes_on_a_full_disk_fail_typed_and_recover(small_disk: Path) -> None:
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * 1024 * 1024)
    with cacheness(cache_dir=small_disk / "c") as cache:
        cache.put({"v": 1}, item="k")
        stored = 1
        with pytest.raises(CacheBackendError, match="full"):
            for i in range(10_000):  # the index file (and its WAL) fill the disk
                cache.put(os.urandom(2000), item=i)
                stored += 1
        assert stored > 1
        assert cache.get(item="k") == {"v": 1}
        assert cache.stats()["entries"] == stored  # the failed put left nothing behind
        ballast.unlink()
        cache.put("room again", item="after")
        assert cache.get(item="after") == "room again"
        assert cache.get(item=0) is not None and cache.stats()["entries"] == stored + 1


def _fill(path: Path) -> None:
    """Write ``path`` until the disk has no byte left."""
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_stats_on_a_full_disk_count_the_unwritten_reads_from_memory(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with cacheness(cache_dir=small_disk / "c") as cache:
        cache.put({"v": 1}, item="k")
        assert cache.get(item="k") == {"v": 1}
        assert cache.get(item="missing") is None
        # An empty WAL: the write of those two reads must grow a file.
        time.sleep(0.1)  # the reader's snapshot ends when idle
        with closing(sqlite3.connect(small_disk / "c" / "metadata.sqlite")) as conn:
            assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        _fill(small_disk / "filler")
        with caplog.at_level("WARNING"):
            full = cache.stats()
        assert "counted from memory" in caplog.text
        assert (full["hits"], full["misses"], full["entries"]) == (1, 1, 1)
        assert cache.stats() == full  # still kept, not counted twice
        (small_disk / "filler").unlink()
        caplog.clear()
        assert cache.stats() == full
        assert "counted from memory" not in caplog.text
    with cacheness(cache_dir=small_disk / "c") as again:
        got = again.stats()
        assert (got["hits"], got["misses"]) == (1, 1)  # written once there was room
