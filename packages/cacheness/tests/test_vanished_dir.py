"""A cache whose folder is deleted while a process has it open (``rm -rf`` to clear it).

The next put notices, the cache starts again, empty, in a new folder at the same
path, and what is written from then on is there for the next process: nothing
goes on into the unlinked files, and the memory tier forgets the old values.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from cacheness import cacheness
from cacheness.storage.backends import _sqlite


@pytest.fixture(autouse=True)
def check_every_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite, "_FILE_CHECK_S", 0.0)


@pytest.mark.parametrize("tier", [0, 8])
def test_deleted_cache_folder_starts_again_empty(tmp_path: Path, tier: int) -> None:
    root = tmp_path / "cache"
    array = np.random.default_rng(0).random(100_000)  # in the store, not the row
    with cacheness(cache_dir=root, memory_cache_entries=tier) as cache:
        cache.put({"a": 1}, item="a")
        cache.put(array, item="array")
        assert cache.get(item="a") == {"a": 1}  # remembered by the tier, when on
        assert cache.stats()["hits"] == 1  # written: the old folder's, gone with it
        shutil.rmtree(root)
        cache.put({"b": 2}, item="b")
        assert cache.get(item="a") is None
        assert cache.get(item="array") is None
        assert cache.get(item="b") == {"b": 2}
        cache.put(array, item="array again")
        stats = cache.stats()
        assert (stats["entries"], stats["hits"], stats["misses"]) == (2, 1, 2)
        assert (root / "cache_generation").exists()
    with cacheness(cache_dir=root) as again:
        assert sorted(e["key_params"]["item"] for e in again.list_entries()) == [
            "array again",
            "b",
        ]
        np.testing.assert_array_equal(again.get(item="array again"), array)
        assert again.get(item="b") == {"b": 2}


def test_a_folder_made_again_by_another_cache_is_shared(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with cacheness(cache_dir=root, memory_cache_entries=8) as first:
        first.put("old", item="k")
        assert first.get(item="k") == "old"
        shutil.rmtree(root)
        with cacheness(cache_dir=root) as second:
            second.put("new", item="k")
            first.put(1, item="other")  # first follows the new file
            assert first.get(item="k") == "new"  # not the tier's "old"
            assert second.get(item="other") == 1
            assert second.stats()["entries"] == 2


def test_memory_tier_forgets_when_the_write_that_notices_is_not_a_put(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with cacheness(cache_dir=root, memory_cache_entries=8) as cache:
        cache.put("old", item="a")
        assert cache.get(item="a") == "old"
        shutil.rmtree(root)
        assert cache.invalidate(item="never put") is False  # a write: it notices
        assert cache.get(item="a") is None
