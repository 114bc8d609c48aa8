"""When the reads counted in memory (hits, access times) reach the SQLite index.

A put leaves them waiting unless it evicts, so the write lock is not held to
rewrite the rows of the reads before it; an evicting put writes them first, so
the victims are chosen by up-to-date access data.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cacheness import cacheness

from .conftest import Clock


def _hits(root: Path) -> dict[str, int]:
    with sqlite3.connect(root / "metadata.sqlite") as conn:
        return dict(conn.execute("SELECT key, hits FROM cache_entries").fetchall())


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
