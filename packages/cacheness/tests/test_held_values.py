"""Small values held in the cache index row of metadata.sqlite (no store entry).

A put of a value that fits inline writes one row; the rest of the API (metadata,
listing, overwrite, update, eviction, signing, tampering) must not tell the
difference, and a directory whose index table predates the layout is rebuilt.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cacheness import SecurityConfig, cacheness
from cacheness.policy import is_held

SMALL = b"s" * 1000
LARGE = b"L" * 100_000  # over the 16 KiB inline limit: a blob and a store entry


def _rows(root: Path) -> list[tuple[str, str, bytes | None]]:
    with sqlite3.connect(root / "metadata.sqlite") as conn:
        return conn.execute(
            "SELECT key, store_key, value FROM cache_entries ORDER BY key"
        ).fetchall()


# With the memory tier a first get reads the row by another query (lookup_for_tier).
TIER = pytest.mark.parametrize("tier", [0, 8], ids=["no-tier", "memory-tier"])


@TIER
def test_a_small_value_lives_in_its_index_row(tmp_path: Path, tier: int) -> None:
    with cacheness(cache_dir=tmp_path, compression="none", memory_cache_entries=tier) as cache:
        key = cache.put(SMALL, item="a", metadata={"team": "x"}, description="d")
        big = cache.put(LARGE, item="b")
        assert cache._store.list() == [next(sk for _, sk, _ in _rows(tmp_path) if not is_held(sk))]
        (k, store_key, value), (k2, _, value2) = sorted(_rows(tmp_path), key=lambda r: r[0] != key)
        assert k == key and is_held(store_key) and value == SMALL  # the bytes, in the row
        assert k2 == big and value2 is None
        assert cache.get(item="a") == SMALL and cache.get(item="b") == LARGE
        meta = cache.get_metadata(item="a")
        assert meta is not None
        assert meta["size"] == len(SMALL) and meta["handler"] == "bytes"
        assert meta["content_hash"].startswith("xxh3_128:")
        assert meta["metadata"] == {"team": "x"} and meta["description"] == "d"
        assert meta["key_params"] == {"item": "a"} and meta["cache_key"] == key
        got = cache.get_with_metadata(item="a")
        assert got is not None and got[0] == SMALL and got[1]["size"] == len(SMALL)
        assert [e["cache_key"] for e in cache.list_entries(team="x")] == [key]
        stats = cache.stats()
        assert stats["entries"] == 2 and stats["size_bytes"] == len(SMALL) + len(LARGE)
    with cacheness(cache_dir=tmp_path) as again:  # and after reopening
        assert again.get(item="a") == SMALL


def test_overwrites_and_removals_leave_nothing_behind(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path, compression="none") as cache:
        cache.put(SMALL, item="a")
        cache.put(LARGE, item="a")  # held -> stored
        assert cache.get(item="a") == LARGE and len(cache._store.list()) == 1
        cache.put(b"t" * 10, item="a")  # stored -> held: the store entry is deleted
        assert cache.get(item="a") == b"t" * 10 and cache._store.list() == []
        assert cache.stats()["size_bytes"] == 10
        assert cache.update_data(b"u" * 20, item="a")
        assert cache.get(item="a") == b"u" * 20
        assert cache.get_metadata(item="a")["size"] == 20  # type: ignore[index]
        assert cache.stats()["size_bytes"] == 20
        assert cache.invalidate(item="a") and not cache.invalidate(item="a")
        assert _rows(tmp_path) == [] and cache._store.list() == []
        assert cache.stats()["entries"] == 0 and cache.stats()["size_bytes"] == 0


@TIER
def test_eviction_and_expiry_of_held_values(tmp_path: Path, tier: int) -> None:
    with cacheness(
        cache_dir=tmp_path, compression="none", max_entries=3, memory_cache_entries=tier
    ) as cache:
        for i in range(5):
            cache.put(SMALL, item=i)
        assert cache.stats()["entries"] == 3 and cache.stats()["evictions"] == 2
        assert [cache.get(item=i) for i in range(5)] == [None, None, SMALL, SMALL, SMALL]
        clock = [cache._clock()]
        cache._clock = lambda: clock[0]
        cache.put(SMALL, item="ttl", ttl_seconds=10)
        clock[0] += 11
        assert cache.get(item="ttl") is None
        assert cache.stats()["expired"] == 1
        assert len(_rows(tmp_path)) == 2  # "ttl" removed; it evicted item 2 when put


@TIER
@pytest.mark.parametrize(
    "value", [SMALL, {"payload": "p" * 1000, "n": 7}], ids=["bytes-handler", "plain-pickle"]
)
def test_a_tampered_held_value_is_a_logged_miss_and_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, value: object, tier: int
) -> None:
    with cacheness(cache_dir=tmp_path, compression="none", memory_cache_entries=tier) as cache:
        names = ("a", "b", "c", "d")
        for name in names:
            cache.put(value, item=name)
        keys = [cache.cache_key(item=name) for name in names]
        with sqlite3.connect(tmp_path / "metadata.sqlite") as conn:
            (data,) = conn.execute(
                "SELECT value FROM cache_entries WHERE key = ?", (keys[0],)
            ).fetchone()
            at = len(data) // 2
            flipped = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
            conn.execute("UPDATE cache_entries SET value = ? WHERE key = ?", (flipped, keys[0]))
            conn.execute("UPDATE cache_entries SET value = ? WHERE key = ?", (b"x" * 7, keys[1]))
            conn.execute("UPDATE cache_entries SET size = size + 1 WHERE key = ?", (keys[2],))
        with caplog.at_level(logging.WARNING, logger="cacheness"):
            assert cache.get(item="a") is None  # same size: the hash catches it
            assert cache.get(item="b") is None  # another size
            # The bytes intact (their hash says so), only the recorded size off: served.
            assert cache.get(item="c") == value
        assert cache.get(item="d") == value
        assert caplog.text.count("could not be read") == 2
        corrupt = [r.getMessage() for r in caplog.records if "stored content" in r.getMessage()]
        assert len(corrupt) == 2  # once per bad value, not once per read attempt
        assert cache.stats()["entries"] == 2
        assert [r[0] for r in _rows(tmp_path)] == sorted(keys[2:])


def test_a_signed_cache_refuses_an_unsigned_held_value(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path) as plain:
        plain.put(SMALL, item="a")
        plain.put(SMALL, item="b")
    sec = SecurityConfig(signing_key=b"k" * 32, delete_invalid_signatures=False)
    with cacheness(cache_dir=tmp_path, security=sec) as signed:
        assert signed.get(item="a") is None  # unsigned: refused, not raised
        got = signed.get_with_metadata(item="a", strict_verification=False)
        assert got is not None and got[0] == SMALL and got[1]["signature_valid"] is False
        assert signed.get_metadata(item="b")["signature_valid"] is False  # type: ignore[index]
        signed.put(SMALL, item="c")  # a signed cache keeps values in the store, signed
        assert signed.get(item="c") == SMALL
        assert [sk for _, sk, _ in _rows(tmp_path) if not is_held(sk)] == signed._store.list()
    with cacheness(cache_dir=tmp_path, security=SecurityConfig(signing_key=b"k" * 32)) as strict:
        assert strict.get(item="b") is None
        assert strict.get_metadata(item="b") is None  # removed (delete_invalid_signatures)


_OLD_LAYOUT = """
CREATE TABLE cache_entries_old (
    key TEXT PRIMARY KEY NOT NULL, store_key TEXT NOT NULL, content_hash TEXT NOT NULL,
    size INTEGER NOT NULL, created REAL NOT NULL, accessed REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0, expires REAL, key_params TEXT, description TEXT,
    metadata TEXT NOT NULL DEFAULT '{}'
) WITHOUT ROWID;
INSERT INTO cache_entries_old SELECT key, store_key, content_hash, size, created, accessed,
    hits, expires, key_params, description, metadata FROM cache_entries;
DROP TABLE cache_entries;
ALTER TABLE cache_entries_old RENAME TO cache_entries;
CREATE INDEX cache_entries_expires ON cache_entries (expires) WHERE expires IS NOT NULL;
CREATE INDEX cache_entries_lru ON cache_entries (accessed, key);
CREATE TABLE side (key TEXT);
CREATE TRIGGER side_cleanup AFTER DELETE ON cache_entries
    BEGIN DELETE FROM side WHERE key = OLD.key; END;
"""


def test_an_index_table_of_the_old_layout_is_rebuilt(tmp_path: Path) -> None:
    # A signed cache stores every value in the store, as versions before held values did.
    sec = SecurityConfig(signing_key=b"k" * 32)
    with cacheness(cache_dir=tmp_path, security=sec, compression="none") as cache:
        keys = [cache.put(SMALL, item=i, ttl_seconds=3600 if i else None) for i in range(3)]
    with sqlite3.connect(tmp_path / "metadata.sqlite") as conn:
        conn.executescript(_OLD_LAYOUT)
        conn.executemany("INSERT INTO side VALUES (?)", [(k,) for k in keys])
        before = conn.execute("SELECT * FROM cache_entries ORDER BY key").fetchall()
    with cacheness(cache_dir=tmp_path, security=sec) as cache:
        assert [cache.get(item=i) for i in range(3)] == [SMALL] * 3
        assert cache.stats()["entries"] == 3
        cache.invalidate(item=0)  # the trigger was carried over to the new table
        cache.put(SMALL, item="new")
    with sqlite3.connect(tmp_path / "metadata.sqlite") as conn:
        sql = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'cache_entries'"
        ).fetchone()[0]
        assert "WITHOUT ROWID" not in sql and "value BLOB" in sql
        assert {r[0] for r in conn.execute("SELECT key FROM side")} == set(keys[1:])
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"cache_entries_expires", "side_cleanup"} <= names
        assert "cache_entries_lru" not in names  # the rowid is the LRU order now
        after = conn.execute(
            "SELECT key, store_key, content_hash, size, created, accessed, hits, expires, "
            "key_params, description, metadata FROM cache_entries WHERE key IN (?, ?)",
            tuple(keys[1:]),
        ).fetchall()
        # Everything carried over but the access data, which the gets above changed.
        kept = [r[:5] + r[7:] for r in before if r[0] in keys[1:]]
        assert [r[:5] + r[7:] for r in sorted(after)] == kept
        hits = conn.execute(
            "SELECT e.hits + coalesce(a.hits, 0) FROM cache_entries AS e "
            "LEFT JOIN cache_access AS a ON a.kid = e.rowid WHERE e.key IN (?, ?)",
            tuple(keys[1:]),
        ).fetchall()
        assert hits == [(1,), (1,)]


def test_a_remembered_held_value_survives_other_writes_in_the_memory_tier(tmp_path: Path) -> None:
    # The decorator's put hands its result to the memory tier; another key's
    # overwrite bumps the generation, and the re-check must find the same row.
    with cacheness(cache_dir=tmp_path, memory_cache_entries=8) as cache:
        key, _ = cache._put(SMALL, {"item": "a"}, remember=True)
        cache.put(1, item="b")
        cache.put(2, item="b")  # an overwrite: the generation goes up
        assert cache._tier is not None
        assert cache.get(item="a") is SMALL  # the very object: served by the tier
        assert key in cache._tier.entries


_OPEN_AND_READ = """
import sys
from cacheness import SecurityConfig, cacheness
sec = SecurityConfig(signing_key=b"k" * 32)
with cacheness(cache_dir=sys.argv[1], security=sec) as cache:
    got = [cache.get(item=i) for i in range(3)]
    assert got == [b"s" * 1000] * 3, got
    cache.put(b"p" * 10, item=sys.argv[2])
print("ok")
"""


def test_processes_opening_an_old_layout_at_once_rebuild_it_once(tmp_path: Path) -> None:
    sec = SecurityConfig(signing_key=b"k" * 32)
    with cacheness(cache_dir=tmp_path, security=sec, compression="none") as cache:
        keys = [cache.put(SMALL, item=i) for i in range(3)]
    with sqlite3.connect(tmp_path / "metadata.sqlite") as conn:
        conn.executescript(_OLD_LAYOUT)
        conn.executemany("INSERT INTO side VALUES (?)", [(k,) for k in keys])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AND_READ, str(tmp_path), f"w{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "ok", err
    with cacheness(cache_dir=tmp_path, security=sec) as cache:
        assert [cache.get(item=i) for i in range(3)] == [SMALL] * 3
        assert [cache.get(item=f"w{i}") for i in range(3)] == [b"p" * 10] * 3
        assert cache.stats()["entries"] == 6
    with sqlite3.connect(tmp_path / "metadata.sqlite") as conn:
        kinds = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE tbl_name LIKE 'cache_entries%' "
            "AND type IN ('table', 'trigger')"
        ).fetchall()
        assert sorted(kinds) == [("table", "cache_entries"), ("trigger", "side_cleanup")]
        assert len({r[0] for r in conn.execute("SELECT key FROM side")}) == 3
