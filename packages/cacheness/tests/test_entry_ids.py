"""The SQLite index finds a row by ``entry_id(key)``, its rowid, not by a key index.

Two keys sharing an id (odds ~n²/2⁶⁵, forced here by patching ``entry_id``) must
never read each other's value: the later put evicts the other entry, and every
read, touch, update and delete by the other key finds nothing. An index table of
the layout before ids is rebuilt on open.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cacheness import cacheness
from cacheness.policy import _shared_sqlite, _sqlite, is_held
from cacheness.policy._sqlite import entry_id

# Over the inline limit, compressed too: a store entry.
LARGE = np.random.default_rng(0).random(5000)
SMALL = {"v": 1}  # held in its index row

LAYOUTS = pytest.mark.parametrize("layout", ["sqlite", "own-file", "memory"])


def _open(root: Path, layout: str, **kw: Any) -> Any:
    if layout == "own-file":
        (root / "cache_index.sqlite").touch()  # the index in a file of its own
    backend = "memory" if layout == "memory" else "sqlite"
    return cacheness(cache_dir=root, metadata_backend=backend, **kw)


@pytest.fixture
def one_id(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every key gets the same id (for caches opened after this)."""
    monkeypatch.setattr(_sqlite, "entry_id", lambda key: 7)
    monkeypatch.setattr(_shared_sqlite, "entry_id", lambda key: 7)
    yield


def test_ids_are_stable_and_signed_64_bit() -> None:
    # Stored in every index file: a change here breaks every existing cache.
    # XXH3-64("") is 0x2D06800538D394C2 (the reference test vector), less 2**63.
    known = {
        "": 0x2D06800538D394C2 - (1 << 63),
        "7a4b7b062b83b77d4271ebb44c7b2f37": -845536442000904367,
        "user key ü": 2731045067651611122,
    }
    assert {k: entry_id(k) for k in known} == known


@LAYOUTS
@pytest.mark.parametrize("value", [SMALL, LARGE], ids=["held", "stored"])
def test_a_key_sharing_an_id_evicts_the_other_and_never_reads_its_value(
    tmp_path: Path, one_id: None, layout: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with _open(tmp_path, layout) as cache:
        a = cache.put(value, item="a")
        assert np.array_equal(cache.get(item="a"), value)
        if layout == "sqlite":  # a small value is held in its index row
            assert len(cache._store.list()) == (1 if value is LARGE else 0)
        size_a = cache.stats()["size_bytes"]
        with caplog.at_level(logging.WARNING, logger="cacheness.policy._sqlite"):
            b = cache.put("bee", item="b")
        assert f"key {b} shares its index id with key {a}" in caplog.text
        assert cache.get(item="b") == "bee"
        assert cache.get(item="a") is None  # a miss, not b's value
        assert cache.get_with_metadata(item="a") is None
        assert cache.get_metadata(item="a") is None
        # Writes by a's key leave b alone.
        assert cache.touch(item="a", ttl_seconds=1) is False
        assert cache.update_data("x", item="a") is False
        assert cache.invalidate(item="a") is False
        assert cache.get(item="b") == "bee" and cache.get_metadata(item="b")["expires_at"] is None
        stats = cache.stats()
        assert (stats["entries"], stats["evictions"]) == (1, 1)
        assert stats["size_bytes"] == cache.get_metadata(item="b")["size"]
        assert [e["cache_key"] for e in cache.list_entries()] == [b]
        # a's value left the store with it.
        named = {sk for sk in cache._index.store_keys() if not is_held(sk)}
        assert set(cache._store.list()) == named
        # And back: a evicts b, and its value is a's again.
        cache.put(value, item="a")
        assert np.array_equal(cache.get(item="a"), value) and cache.get(item="b") is None
        assert cache.stats()["evictions"] == 2
        assert cache.stats()["size_bytes"] == size_a


def test_an_overwrite_of_a_key_still_overwrites_in_place(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path) as cache:
        key = cache.put(SMALL, item="a")
        cache.put({"v": 2}, item="a")
        assert cache.get(item="a") == {"v": 2}
        assert (cache.stats()["entries"], cache.stats()["evictions"]) == (1, 0)
    with closing(sqlite3.connect(tmp_path / "metadata.sqlite")) as conn:
        assert conn.execute("SELECT kid, key FROM cache_entries").fetchall() == [
            (entry_id(key), key)
        ]


def test_gets_search_the_table_by_rowid_with_no_key_index(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path) as cache:
        cache.put(SMALL, item="a")
    with closing(sqlite3.connect(tmp_path / "metadata.sqlite")) as conn:
        leading = [
            conn.execute(
                f"SELECT name FROM pragma_index_info('{r[1]}') WHERE seqno = 0"
            ).fetchone()[0]
            for r in conn.execute("PRAGMA index_list(cache_entries)")
        ]
        assert leading and "key" not in leading  # one B-tree less per put
        plans = []
        for sql in (_shared_sqlite._VALUE_GET, _shared_sqlite._TIER_GET, _shared_sqlite._JOINED):
            args = (0.0, 1, "k") if "?3" in sql else (1, "k")
            plans += [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
        searches = [p for p in plans if "cache_entries" in p or p.startswith("SEARCH c ")]
        assert searches and all("INTEGER PRIMARY KEY" in p for p in searches), plans


_COLS = (
    "key, store_key, content_hash, size, created, accessed, hits, expires, key_params, "
    "description, metadata, value_type, value_handler, value_codec, value_hash, "
    "value_created_us, value_info, value"
)
# cache_entries as versions before entry ids made it: keyed by key, values held.
_KEYED_LAYOUT = f"""
CREATE TABLE cache_entries_old (
    key TEXT PRIMARY KEY NOT NULL, store_key TEXT NOT NULL, content_hash TEXT NOT NULL,
    size INTEGER NOT NULL, created REAL NOT NULL, accessed REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0, expires REAL, key_params TEXT, description TEXT,
    metadata TEXT NOT NULL DEFAULT '{{}}', value_type TEXT, value_handler TEXT,
    value_codec TEXT, value_hash TEXT, value_created_us INTEGER, value_info TEXT, value BLOB
);
INSERT INTO cache_entries_old SELECT {_COLS} FROM cache_entries;
DROP TABLE cache_entries;
ALTER TABLE cache_entries_old RENAME TO cache_entries;
CREATE INDEX cache_entries_expires ON cache_entries (expires) WHERE expires IS NOT NULL;
CREATE INDEX cache_entries_lru ON cache_entries (accessed, key);
CREATE TABLE side (key TEXT);
CREATE TRIGGER side_cleanup AFTER DELETE ON cache_entries
    BEGIN DELETE FROM side WHERE key = OLD.key; END;
"""


def _to_keyed_layout(root: Path) -> list[tuple[Any, ...]]:
    """Turn ``root``'s index table into the keyed layout; its rows, sorted by key."""
    with closing(sqlite3.connect(root / "metadata.sqlite")) as conn:
        conn.executescript(_KEYED_LAYOUT)
        conn.execute("INSERT INTO side SELECT key FROM cache_entries")
        conn.commit()
        return conn.execute(f"SELECT {_COLS} FROM cache_entries ORDER BY key").fetchall()


def test_an_index_table_keyed_by_key_is_rebuilt_with_ids(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path) as cache:
        keys = [cache.put(SMALL, item=i) for i in range(3)] + [cache.put(LARGE, item="big")]
        before_stats = cache.stats()
    before = _to_keyed_layout(tmp_path)
    with cacheness(cache_dir=tmp_path) as cache:
        assert cache.stats() == before_stats
        with closing(sqlite3.connect(tmp_path / "metadata.sqlite")) as conn:
            after = conn.execute(f"SELECT {_COLS} FROM cache_entries ORDER BY key").fetchall()
            ids = conn.execute("SELECT kid, key FROM cache_entries").fetchall()
        assert after == before  # every column, held values included
        assert all(kid == entry_id(key) for kid, key in ids)
        assert [cache.get(item=i) for i in range(3)] == [SMALL] * 3
        assert np.array_equal(cache.get(item="big"), LARGE)
        cache.invalidate(item=0)  # the trigger was carried over
    with closing(sqlite3.connect(tmp_path / "metadata.sqlite")) as conn:
        assert {r[0] for r in conn.execute("SELECT key FROM side")} == set(keys[1:])


def test_a_rebuild_keeps_one_of_the_keys_sharing_an_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with cacheness(cache_dir=tmp_path) as cache:
        for i in range(3):
            cache.put(LARGE + i, item=i)
        assert len(cache._store.list()) == 3
    _to_keyed_layout(tmp_path)
    monkeypatch.setattr(_sqlite, "entry_id", lambda key: 7)
    monkeypatch.setattr(_shared_sqlite, "entry_id", lambda key: 7)
    with caplog.at_level(logging.WARNING), cacheness(cache_dir=tmp_path) as cache:
        assert "dropped 2 entries whose key shares its id" in caplog.text
        stats = cache.stats()
        assert (stats["entries"], stats["evictions"]) == (1, 2)
        (kept,) = [i for i in range(3) if cache.get(item=i) is not None]
        assert np.array_equal(cache.get(item=kept), LARGE + kept)
        assert stats["size_bytes"] == cache.get_metadata(item=kept)["size"]
        cache.cleanup_expired()
        assert len(cache._store.list()) == 3  # unnamed values, young: maybe a put's
        now = time.time()
        cache._clock = lambda: now + 2 * 3600
        cache.cleanup_expired()  # the dropped entries' values, an hour old, go
        assert len(cache._store.list()) == 1
        assert np.array_equal(cache.get(item=kept), LARGE + kept)


def test_a_rebuild_adds_in_the_reads_waiting_by_old_rowid(tmp_path: Path) -> None:
    # The keyed layout kept waiting reads in cache_access by the table's own rowid.
    with cacheness(cache_dir=tmp_path) as cache:
        for i in range(3):
            cache.put(SMALL, item=i)
    _to_keyed_layout(tmp_path)
    with closing(sqlite3.connect(tmp_path / "metadata.sqlite")) as conn:
        conn.execute("DELETE FROM cache_access")
        rowid, hits, accessed = conn.execute(
            "SELECT rowid, hits, accessed FROM cache_entries WHERE key_params LIKE '%1%'"
        ).fetchone()
        conn.execute("INSERT INTO cache_access VALUES (?, 5, ?)", (rowid, accessed + 60))
        conn.commit()
    with cacheness(cache_dir=tmp_path) as cache:
        meta = cache.get_metadata(item=1)
        assert meta is not None and meta["hits"] == hits + 5
        assert [cache.get_metadata(item=i)["hits"] for i in (0, 2)] == [0, 0]  # type: ignore[index]
    with closing(sqlite3.connect(tmp_path / "metadata.sqlite")) as conn:
        assert conn.execute("SELECT count(*) FROM cache_access").fetchone()[0] == 0
        assert conn.execute(
            "SELECT accessed FROM cache_entries WHERE kid = ?", (entry_id(meta["cache_key"]),)
        ).fetchone()[0] == pytest.approx(accessed + 60)
