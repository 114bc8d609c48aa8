"""Identical content is stored once; deleting a key never breaks another; gc frees the rest."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from cacheness.storage import BlobStore, _store


@pytest.fixture(autouse=True)
def _values_in_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests damage or count blob files: keep every value in the blob backend
    (values small enough for the metadata row are covered by test_inline.py)."""
    monkeypatch.setattr(_store, "INLINE_MAX", 0)


def test_identical_content_is_one_file(file_store: BlobStore, blob_files: Any) -> None:
    value = {"weights": list(range(2000))}
    for i in range(10):
        file_store.put(value, key=f"model-{i}", metadata={"i": i})
    assert len(blob_files(file_store.root)) == 1
    file_store.put({"other": 1}, key="x")
    assert len(blob_files(file_store.root)) == 2
    assert file_store.get("model-7") == value


def test_put_file_and_put_of_same_bytes_share(file_store: BlobStore, blob_files: Any) -> None:
    data = os.urandom(300_000)  # incompressible: stored raw by both paths
    file_store.put_file(io.BytesIO(data), key="a")
    file_store.put_file(io.BytesIO(data), key="b")
    assert len(blob_files(file_store.root)) == 1
    assert file_store.get("a") == file_store.get("b") == data


def test_delete_one_key_keeps_the_others(file_store: BlobStore, blob_files: Any) -> None:
    for k in ("a", "b", "c"):
        file_store.put(b"shared" * 1000, key=k)
    assert file_store.delete("a")
    assert file_store.get("b") == file_store.get("c") == b"shared" * 1000
    assert len(blob_files(file_store.root)) == 1
    assert file_store.delete("b") and file_store.delete("c")
    assert blob_files(file_store.root) == []  # the last reference frees the content


def test_overwrite_frees_content_no_one_else_uses(file_store: BlobStore, blob_files: Any) -> None:
    file_store.put(b"v1" * 1000, key="k")
    file_store.put(b"v1" * 1000, key="other")
    file_store.put(b"v2" * 1000, key="k")
    assert len(blob_files(file_store.root)) == 2  # v1 still used by "other"
    file_store.put(b"v3" * 1000, key="other")
    assert len(blob_files(file_store.root)) == 2  # v1 freed, v2 and v3 remain
    assert file_store.get("k") == b"v2" * 1000 and file_store.get("other") == b"v3" * 1000


def test_gc_frees_unreferenced_content_and_returns_bytes(
    file_store: BlobStore, blob_files: Any
) -> None:
    file_store.put(b"keep" * 100, key="keep")
    # Orphans as a crash between blob write and metadata commit leaves them.
    file_store.blob_backend.put("0" * 32, b"o" * 1000)
    file_store.blob_backend.put("1" * 32, b"p" * 2345)
    assert len(blob_files(file_store.root)) == 3
    assert sorted(file_store.verify().orphaned) == ["0" * 32, "1" * 32]
    assert file_store.gc() == 1000 + 2345
    assert len(blob_files(file_store.root)) == 1
    assert file_store.get("keep") == b"keep" * 100
    assert file_store.gc() == 0


def test_gc_removes_stale_temp_files_only(file_store: BlobStore) -> None:
    assert file_store.root is not None
    tmp = file_store.root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    old, fresh = tmp / "w-old", tmp / "w-fresh"
    old.write_bytes(b"x" * 50)
    fresh.write_bytes(b"y" * 70)
    os.utime(old, (1, 1))
    assert file_store.gc() == 50
    assert not old.exists() and fresh.exists()


@pytest.mark.parametrize("pairing", ["memory", "json", "sqlite"])
def test_sharing_on_other_backends(tmp_path: Path, pairing: str) -> None:
    kw: dict[str, Any] = (
        {"backend": "memory", "blob_backend": "memory"}
        if pairing == "memory"
        else {"backend": pairing}
    )
    path = None if pairing == "memory" else tmp_path / "s"
    with BlobStore(path, **kw) as store:
        for k in ("a", "b"):
            store.put([1, 2, 3] * 100, key=k)
        assert len(list(store.blob_backend.iter_keys())) == 1
        store.delete("a")
        assert store.get("b") == [1, 2, 3] * 100
        store.delete("b")
        assert list(store.blob_backend.iter_keys()) == []


def test_not_content_addressable_stores_copies(tmp_path: Path, blob_files: Any) -> None:
    with BlobStore(tmp_path / "s", content_addressable=False) as store:
        store.put(b"same" * 100, key="a")
        store.put(b"same" * 100, key="b")
        assert len(blob_files(store.root)) == 2
        store.put(b"new" * 100, key="a")
        assert len(blob_files(store.root)) == 2
        store.delete("a")
        store.delete("b")
        assert blob_files(store.root) == []


def test_truncated_shared_blob_is_rewritten_by_next_put(
    file_store: BlobStore, blob_files: Any
) -> None:
    from cacheness.storage import CacheIntegrityError

    data = os.urandom(10_000)
    file_store.put(data, key="a")
    (blob,) = blob_files(file_store.root)
    blob.write_bytes(data[:100])
    with pytest.raises(CacheIntegrityError):
        file_store.get("a")
    file_store.put(data, key="b")  # same content: must not reuse the damaged file
    assert file_store.get("a") == file_store.get("b") == data
    assert file_store.verify().ok


def test_a_put_of_content_damaged_in_place_writes_it_again(tmp_path: Path) -> None:
    """Stored content damaged without changing its size (bit rot) is not shared with a
    new key: the put writes it again, which mends every key already sharing it."""

    from cacheness.storage.errors import CacheIntegrityError

    store = BlobStore(tmp_path)
    value = os.urandom(100_000)
    store.put(value, key="a")
    path = store.blob_backend.path_for(store.metadata_backend.get("a").blob_key)
    damaged = bytearray(path.read_bytes())
    damaged[500] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(CacheIntegrityError):
        store.get("a")
    store.put(value, key="b")
    assert store.get("b") == value
    assert store.get("a") == value  # one blob, written whole again
    path.write_bytes(bytes(damaged))
    store.put_file(io.BytesIO(value), key="c")
    assert store.open("c").read() == value
    store.close()
