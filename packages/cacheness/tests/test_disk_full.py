"""A cache on a full disk: typed errors, the old values intact, and back to work
once there is room again. The disk is a 3 MiB tmpfs (mounting one needs root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cacheness import CacheBackendError, CacheStorageError, cacheness


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    vol = tmp_path / "vol"
    vol.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(vol)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr!r}")
    try:
        yield vol
    finally:
        subprocess.run(["umount", str(vol)], check=True)


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
