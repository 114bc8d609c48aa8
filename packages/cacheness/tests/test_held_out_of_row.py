"""Held values longer than ``IN_ROW`` bytes live in ``cache_values``, not in the row.

Index rows go in at random places in their B-tree (the rowid is the key's hash),
so a larger held value is appended to a table of its own and the row names it by
``vid``. The API must not tell the difference, and no path that removes or
replaces an entry may leave its ``cache_values`` row behind.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cacheness import cacheness
from cacheness.policy._sqlite import IN_ROW

TINY = b"t" * (IN_ROW // 2)  # in the row
MID = b"m" * (IN_ROW * 4)  # in cache_values, still held by the index


def _placement(root: Path) -> dict[str, tuple[bool, bool]]:
    """key -> (value in the row, value in cache_values) for every index row."""
    with closing(sqlite3.connect(root / "metadata.sqlite")) as conn:
        rows = conn.execute(
            "SELECT c.key, c.value IS NOT NULL, v.value IS NOT NULL FROM cache_entries AS c "
            "LEFT JOIN cache_values AS v ON v.vid = c.vid"
        ).fetchall()
    return {k: (bool(a), bool(b)) for k, a, b in rows}


def _values(root: Path) -> tuple[int, int]:
    """(rows in cache_values, rows in cache_values no index row names)."""
    with closing(sqlite3.connect(root / "metadata.sqlite")) as conn:
        total = conn.execute("SELECT count(*) FROM cache_values").fetchone()[0]
        orphans = conn.execute(
            "SELECT count(*) FROM cache_values WHERE vid NOT IN "
            "(SELECT vid FROM cache_entries WHERE vid IS NOT NULL)"
        ).fetchone()[0]
    return total, orphans


@pytest.mark.parametrize("tier", [0, 8], ids=["no-tier", "memory-tier"])
def test_values_over_in_row_go_to_cache_values_and_read_back(tmp_path: Path, tier: int) -> None:
    with cacheness(cache_dir=tmp_path, compression="none", memory_cache_entries=tier) as cache:
        small = cache.put(TINY, item="small")
        mid = cache.put(MID, item="mid")
        assert _placement(tmp_path) == {small: (True, False), mid: (False, True)}
        assert cache._store.list() == []  # both held by the index: no store entry
        assert cache.get(item="small") == TINY and cache.get(item="mid") == MID
        value, meta = cache.get_with_metadata(item="mid")
        assert value == MID and meta is not None and meta["size"] == len(MID)
    with cacheness(cache_dir=tmp_path) as again:  # another object, from the file
        assert again.get(item="mid") == MID and again.get(item="small") == TINY


def test_no_removal_or_replacement_leaves_a_value_row_behind(tmp_path: Path) -> None:
    now = [1000.0]
    with cacheness(cache_dir=tmp_path, compression="none", max_entries=3) as cache:
        cache._clock = lambda: now[0]
        for i in range(3):
            cache.put(MID + bytes([i]), item=i)
        assert _values(tmp_path) == (3, 0)
        cache.put(MID + b"x", item=0)  # overwrite, big by big
        cache.put(TINY, item=1)  # overwrite, big by small
        assert _values(tmp_path) == (2, 0)
        assert cache.get(item=0) == MID + b"x" and cache.get(item=1) == TINY
        cache.invalidate(item=0)
        assert _values(tmp_path) == (1, 0)
        now[0] += 1
        cache.put(MID, item="a")
        now[0] += 1
        cache.put(MID, item="b")  # four entries over max_entries=3: the oldest goes
        assert cache.stats()["evictions"] == 1
        assert cache.get(item=2) is None  # the least recently used
        assert _values(tmp_path) == (2, 0)
        cache.put(MID, item="ttl", ttl_seconds=5)
        now[0] += 10
        assert cache.cleanup_expired() == 1
        assert cache.get(item="a") == MID and cache.get(item="b") == MID
        assert _values(tmp_path) == (2, 0)
        cache.clear()
        assert _values(tmp_path) == (0, 0) and cache.stats()["entries"] == 0


def test_update_data_moves_a_held_value_out_cleanly(tmp_path: Path) -> None:
    big = list(range(5000))  # over the 16 KiB a held value may take: a store entry
    with cacheness(cache_dir=tmp_path, compression="none") as cache:
        cache.put(MID, item="k")
        assert _values(tmp_path) == (1, 0)
        assert cache.update_data(big, item="k")
        assert cache.get(item="k") == big
        assert _values(tmp_path) == (0, 0)


def test_a_failed_put_leaves_no_value_row(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    def fail(conn: Any) -> None:
        raise Boom

    with cacheness(cache_dir=tmp_path, compression="none") as cache:
        cache.put(MID, item="kept")
        index = cache._index
        real_put = index.put
        index.put = lambda *a, **kw: real_put(*a, **{**kw, "extra": fail})  # type: ignore[method-assign]
        with pytest.raises(Boom):
            cache.put(MID + b"2", item="lost")
        index.put = real_put  # type: ignore[method-assign]
        assert _values(tmp_path) == (1, 0)  # the transaction took its value row back
        assert cache.get(item="kept") == MID and cache.get(item="lost") is None
