"""A damaged index file: a typed error naming it, and the file left as it was (it
may still be worth recovering with sqlite3's .recover)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cacheness import CacheBackendError, cacheness


def _filled(root: Path) -> Path:
    with cacheness(cache_dir=root) as cache:
        for i in range(300):
            cache.put({"i": i, "pad": "x" * 500}, item=i)
    db = root / "metadata.sqlite"
    return db


def test_garbage_index_file(tmp_path: Path) -> None:
    db = _filled(tmp_path)
    garbage = b"not sqlite" + os.urandom(8182)
    db.write_bytes(garbage)
    for side in ("metadata.sqlite-wal", "metadata.sqlite-shm"):
        (tmp_path / side).unlink(missing_ok=True)
    with pytest.raises(CacheBackendError, match=r"metadata\.sqlite.*not a database"):
        cacheness(cache_dir=tmp_path)
    assert db.read_bytes() == garbage


def test_truncated_index_file(tmp_path: Path) -> None:
    db = _filled(tmp_path)
    for side in ("metadata.sqlite-wal", "metadata.sqlite-shm"):
        (tmp_path / side).unlink(missing_ok=True)
    cut = db.read_bytes()[: 3 * 4096]
    db.write_bytes(cut)
    with pytest.raises(CacheBackendError, match=r"metadata\.sqlite.*malformed"):
        cacheness(cache_dir=tmp_path)
    assert db.read_bytes() == cut
