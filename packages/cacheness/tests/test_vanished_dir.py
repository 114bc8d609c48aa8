"""A cache whose folder is deleted while a process has it open (``rm -rf`` to clear it).

The next put notices, the cache starts again, empty, in a new folder at the same
path, and what is written from then on is there for the next process: nothing
goes on into the unlinked files, and the memory tier forgets the old values.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

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


def _models() -> Any:
    spec = importlib.util.spec_from_file_location(
        "cacheness_test_custom_models", Path(__file__).parent / "custom_metadata" / "_models.py"
    )
    name = "cacheness_test_custom_models"
    if name not in sys.modules:
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_custom_metadata_follows_a_deleted_folder(tmp_path: Path) -> None:
    models = _models()
    root = tmp_path / "cache"
    with cacheness(cache_dir=root, metadata_backend="sqlite") as cache:
        exp = models.MLExperiment
        cache.put(1, custom_metadata={"ml_experiments": exp(model_type="old", accuracy=0.1)}, k=1)
        assert [r.model_type for r in cache.query_custom("ml_experiments")] == ["old"]
        shutil.rmtree(root)
        key = cache.put(
            2, custom_metadata={"ml_experiments": exp(model_type="new", accuracy=0.2)}, k=2
        )
        # The queries read the new file: the old row went with the old folder.
        found = cache.query_custom("ml_experiments")
        assert [(r.model_type, r.cache_key) for r in found] == [("new", key)]
        assert cache.invalidate(k=2) is True  # the new file's trigger removes its row
        assert cache.query_custom("ml_experiments") == []
        cache.put(3, custom_metadata={"ml_experiments": exp(model_type="kept", accuracy=0.3)}, k=3)
    with cacheness(cache_dir=root, metadata_backend="sqlite") as again:
        assert [r.model_type for r in again.query_custom("ml_experiments")] == ["kept"]
        assert again.get(k=3) == 3
