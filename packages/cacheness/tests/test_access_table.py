"""Reads written to SQLite wait in ``cache_access`` (a small table) instead of
rewriting the entry's row; eviction moves them into a candidate's row when it
reaches the front of the policy order, and every reader of access data adds
both. Checked here through the public API and the bytes in the file."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cacheness import cacheness

from .conftest import Clock


def _file(root: Path) -> tuple[dict[str, tuple[int, float]], dict[str, tuple[int, float]]]:
    """({key: (hits, accessed)} of the rows, {key: (hits, accessed)} waiting)."""
    with closing(sqlite3.connect(root / "metadata.sqlite")) as conn:
        rows = {
            k: (h, t) for k, h, t in conn.execute("SELECT key, hits, accessed FROM cache_entries")
        }
        waiting = {
            k: (h, t)
            for k, h, t in conn.execute(
                "SELECT e.key, a.hits, a.accessed FROM cache_access AS a "
                "JOIN cache_entries AS e ON e.rowid = a.kid"
            )
        }
        orphans = conn.execute(
            "SELECT count(*) FROM cache_access WHERE kid NOT IN (SELECT rowid FROM cache_entries)"
        ).fetchone()[0]
    assert orphans == 0  # no reads are kept for an entry that is gone
    return rows, waiting


def _open(root: Path, clock: Clock, **kw: Any) -> Any:
    cache = cacheness(cache_dir=root, access_flush_seconds=3600, **kw)
    cache._clock = clock
    return cache


def _items(cache: Any) -> set[str]:
    return {e["key_params"]["item"] for e in cache.list_entries()}


def test_reads_wait_beside_the_row_and_readers_add_them(tmp_path: Path, clock: Clock) -> None:
    with _open(tmp_path, clock) as cache:
        a = cache.put("a", item="a")
        put_at = clock.now
        clock.advance(5)
        for _ in range(3):
            assert cache.get(item="a") == "a"
        cache.stats()  # writes the reads
        rows, waiting = _file(tmp_path)
        assert rows[a] == (0, put_at)  # the row is not rewritten by reads
        assert waiting[a] == (3, put_at + 5)
        meta = cache.get_metadata(item="a")
        assert meta["hits"] == 3 and meta["accessed_at"].timestamp() == put_at + 5
        (listed,) = cache.list_entries()
        assert listed["hits"] == 3
    with _open(tmp_path, clock) as again:  # and another process sees them too
        assert again.get_metadata(item="a")["hits"] == 3


def test_lru_moves_a_read_candidate_and_evicts_the_true_oldest(
    tmp_path: Path, clock: Clock
) -> None:
    with _open(tmp_path, clock, max_entries=3) as cache:
        t0 = clock.now
        for name in "abc":
            cache.put(name, item=name)  # accessed t0, t0 + 10, t0 + 20
            clock.advance(10)

        def read_then_put(read: str, read_at: float, new: str, put_at: float) -> set[str]:
            clock.now = read_at
            cache.get(item=read)
            cache.stats()  # the read waits in cache_access
            clock.now = put_at
            cache.put(new, item=new)
            return _items(cache)

        # a was read at t0 + 5: after the move it is still older than b.
        assert read_then_put("a", t0 + 5, "d", t0 + 40) == {"b", "c", "d"}
        # c read at t0 + 45: now b, then d, then c.
        assert read_then_put("c", t0 + 45, "e", t0 + 50) == {"c", "d", "e"}
        c = cache.cache_key(item="c")
        assert c in _file(tmp_path)[1]  # b went first: c was not at the front yet
        # Now c's row (put at t0 + 20) is at the front; read at t0 + 45, it moves
        # behind d (t0 + 40), which goes.
        cache.put("f", item="f")
        assert _items(cache) == {"c", "e", "f"}
        rows, waiting = _file(tmp_path)
        assert c not in waiting and rows[c] == (1, t0 + 45)  # moved into its row


def test_lfu_counts_the_waiting_reads(tmp_path: Path, clock: Clock) -> None:
    with _open(tmp_path, clock, max_entries=2, eviction_policy="lfu") as cache:
        cache.put("a", item="a")
        cache.put("b", item="b")
        for _ in range(2):
            cache.get(item="a")
        cache.stats()
        cache.get(item="b")  # in memory, written by the evicting put
        clock.advance(1)
        cache.put("c", item="c")
        assert _items(cache) == {"a", "c"}  # b: 1 hit, a: 2
        clock.advance(1)
        cache.put("d", item="d")
        assert _items(cache) == {"a", "d"}  # c: 0 hits
        assert cache.get_metadata(item="a")["hits"] == 2


def test_fifo_ignores_reads_and_drops_the_victims_reads(tmp_path: Path, clock: Clock) -> None:
    with _open(tmp_path, clock, max_entries=2, eviction_policy="fifo") as cache:
        a = cache.put("a", item="a")
        clock.advance(1)
        cache.put("b", item="b")
        cache.get(item="a")
        cache.stats()
        assert a in _file(tmp_path)[1]
        clock.advance(1)
        cache.put("c", item="c")
        assert _items(cache) == {"b", "c"}
        _file(tmp_path)  # no orphaned reads


@pytest.mark.parametrize("how", ["invalidate", "expire", "clear", "clear-prefix", "overwrite"])
def test_removing_or_replacing_an_entry_drops_its_waiting_reads(
    tmp_path: Path, clock: Clock, how: str
) -> None:
    with _open(tmp_path, clock) as cache:
        a = cache.put("a", item="a", ttl_seconds=10)
        cache.put("b", item="b")
        cache.get(item="a")
        cache.get(item="b")
        cache.stats()
        assert set(_file(tmp_path)[1]) == {a, cache.cache_key(item="b")}
        if how == "invalidate":
            assert cache.invalidate(item="a")
        elif how == "expire":
            clock.advance(11)
            assert cache.cleanup_expired() == 1
        elif how == "clear":
            cache.clear()
        elif how == "clear-prefix":
            assert cache._delete_prefix(a[:6]) == 1
        else:
            clock.advance(3)
            cache.put("a2", item="a")
            assert cache.get_metadata(item="a")["hits"] == 0  # a new value, not yet read
        _rows, waiting = _file(tmp_path)  # and no orphans
        if how == "overwrite":
            # The new value's access time waits beside the row (which keeps its place
            # in the table) until eviction needs it; its reads are gone.
            assert waiting[a] == (0, clock.now)
        else:
            assert a not in waiting
        if how != "clear":
            assert cache.get_metadata(item="b")["hits"] == 1


def test_cleanup_expired_drops_reads_left_for_rows_that_are_gone(
    tmp_path: Path, clock: Clock
) -> None:
    with _open(tmp_path, clock) as cache:
        cache.put("a", item="a")
        cache.get(item="a")
        cache.stats()
        # A process of a version without cache_access deletes the row directly.
        with closing(sqlite3.connect(tmp_path / "metadata.sqlite")) as conn:
            conn.execute("DELETE FROM cache_entries")
            conn.commit()
            assert conn.execute("SELECT count(*) FROM cache_access").fetchone()[0] == 1
        cache.cleanup_expired()
        _file(tmp_path)  # asserts no orphans


def _table_order(root: Path) -> tuple[list[float], set[str]]:
    """(The rows' access times in rowid order, the names of cache_entries' indexes)."""
    with closing(sqlite3.connect(root / "metadata.sqlite")) as conn:
        times = [r[0] for r in conn.execute("SELECT accessed FROM cache_entries ORDER BY rowid")]
        names = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'cache_entries'"
            )
        }
    return times, names


def test_lru_counts_overwrites_and_touches_as_accesses_without_an_index(
    tmp_path: Path, clock: Clock
) -> None:
    with _open(tmp_path, clock, max_entries=3) as cache:
        for name in "abc":
            cache.put(name, item=name)
            clock.advance(10)
        cache.put("a2", item="a")  # an overwrite is an access
        clock.advance(10)
        cache.put("d", item="d")
        assert _items(cache) == {"a", "c", "d"}
        assert cache.touch(item="c", ttl_seconds=3600)  # and so is a touch
        clock.advance(10)
        cache.put("e", item="e")
        assert _items(cache) == {"c", "d", "e"}
        assert cache.get(item="c") == "c"
        times, names = _table_order(tmp_path)
        assert times == sorted(times)  # the table is in LRU order
        assert not any(n.endswith("_lru") for n in names)


def test_entries_of_one_instant_keep_the_order_they_were_written_and_read(
    tmp_path: Path, clock: Clock
) -> None:
    # A clock that stands still: every entry has the same access time and rowids
    # can't come from it; the order is then the order of puts and reads.
    with _open(tmp_path, clock, max_entries=3) as cache:
        for name in "abc":
            cache.put(name, item=name)
        cache.get(item="a")
        cache.stats()
        cache.put("d", item="d")
        assert _items(cache) == {"a", "c", "d"}  # b: a was read after it
        cache.put("e", item="e")
        assert _items(cache) == {"a", "d", "e"}
        assert [cache.get(item=n) for n in "ade"] == ["a", "d", "e"]


def test_an_index_whose_rowids_are_not_in_access_order_is_rebuilt_on_open(
    tmp_path: Path, clock: Clock
) -> None:
    with _open(tmp_path, clock) as cache:
        keys = {}
        for name in "abcd":
            keys[name] = cache.put(name, item=name, ttl_seconds=3600 if name == "b" else None)
            clock.advance(10)
        cache.get(item="a")  # a: read last, at t0 + 40
        cache.stats()
    # As an earlier version left it: rowids in the reverse order of access, an
    # index on accessed, no rowid_order marker, a's read waiting beside its row.
    with closing(sqlite3.connect(tmp_path / "metadata.sqlite")) as conn:
        conn.executescript(
            """
            UPDATE cache_entries SET rowid = -rowid;
            UPDATE cache_access SET kid = -kid;
            CREATE INDEX cache_entries_lru ON cache_entries (accessed, key);
            ALTER TABLE cache_state DROP COLUMN rowid_order;
            CREATE TABLE side (key TEXT);
            CREATE TRIGGER side_cleanup AFTER DELETE ON cache_entries
                BEGIN DELETE FROM side WHERE key = OLD.key; END;
            """
        )
        conn.executemany("INSERT INTO side VALUES (?)", [(k,) for k in keys.values()])
        conn.commit()
        assert _table_order(tmp_path)[0] != sorted(_table_order(tmp_path)[0])
    with _open(tmp_path, clock, max_entries=4) as cache:
        times, names = _table_order(tmp_path)
        assert times == sorted(times)
        assert "cache_entries_lru" not in names and "cache_entries_expires" in names
        rows, waiting = _file(tmp_path)
        assert waiting == {} and rows[keys["a"]][0] == 1  # a's read moved into its row
        assert cache.get_metadata(item="a")["hits"] == 1
        assert cache.get_metadata(item="b")["expires_at"] is not None
        cache.put("e", item="e")  # evicts b, the least recently used
        assert _items(cache) == {"a", "c", "d", "e"}
    with closing(sqlite3.connect(tmp_path / "metadata.sqlite")) as conn:
        left = {r[0] for r in conn.execute("SELECT key FROM side")}
        assert left == {keys[n] for n in "acd"}  # the trigger was carried over
