"""Large puts: hashing while writing (speculative temp blob) and the compressibility probe."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from cacheness.storage import BlobStore, CacheStorageError, _writing
from cacheness.storage.backends import FilesystemBlobBackend


@pytest.fixture
def small_fuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the hash-while-writing path for any blob of 64 KiB or more."""
    monkeypatch.setattr(_writing, "_FUSE_MIN", 64 * 1024)


def _blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blobs").rglob("*") if p.is_file())


def test_hash_while_writing_matches_the_two_pass_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arr = np.random.default_rng(1).standard_normal(200_000)
    with BlobStore(tmp_path / "two-pass") as plain:
        expected = plain.put_record(arr, key="a")
    monkeypatch.setattr(_writing, "_FUSE_MIN", 64 * 1024)
    with BlobStore(tmp_path / "fused") as store:
        record = store.put_record(arr, key="a")
        assert record.content_hash == expected.content_hash
        assert record.blob_key == expected.blob_key
        assert np.array_equal(store.get("a"), arr)
        assert store.verify().ok
        assert store.blob_backend.temp_files() == []


def test_duplicate_under_a_new_key_shares_the_blob(tmp_path: Path, small_fuse: None) -> None:
    arr = np.random.default_rng(2).standard_normal(100_000)
    with BlobStore(tmp_path) as store:
        first = store.put_record(arr, key="a")
        second = store.put_record(arr.copy(), key="b")  # written speculatively, then dropped
        assert second.blob_key == first.blob_key
        assert len(_blob_files(tmp_path)) == 1
        assert store.blob_backend.temp_files() == []
        store.delete("a")
        assert np.array_equal(store.get("b"), arr)


def test_bytes_and_uuid_blobs_round_trip(tmp_path: Path, small_fuse: None) -> None:
    value = os.urandom(300_000)
    with BlobStore(tmp_path, content_addressable=False) as store:
        store.put(value, key="v")
        store.put(value, key="w")
        assert store.get("v") == value and store.get("w") == value
        assert len(_blob_files(tmp_path)) == 2
        assert store.verify().ok


class _DevFull(FilesystemBlobBackend):
    """Blob writes hit /dev/full (ENOSPC) while the temp file exists where it should."""

    def _mkstemp(self) -> tuple[int, str]:
        fd, name = super()._mkstemp()
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name


def test_failed_write_leaves_nothing_behind(tmp_path: Path, small_fuse: None) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    blobs = _DevFull(tmp_path)
    with BlobStore(tmp_path, blob_backend=blobs) as store:
        with pytest.raises(CacheStorageError, match="'big'"):
            store.put(np.random.default_rng(3).standard_normal(100_000), key="big")
        assert not store.exists("big")
        assert blobs.temp_files() == []
        assert _blob_files(tmp_path) == []


def test_large_incompressible_bytes_are_stored_raw(tmp_path: Path) -> None:
    noise = os.urandom(2 * 1024 * 1024)
    text = b"the same line again\n" * 100_000
    with BlobStore(tmp_path, compression="lz4") as store:
        raw = store.put_record(noise, key="noise")
        packed = store.put_record(text, key="text")
        assert raw.codec == "none" and raw.size == len(noise)
        assert packed.codec != "none" and packed.size < len(text) // 10
        assert store.get("noise") == noise
        assert store.get("text") == text
