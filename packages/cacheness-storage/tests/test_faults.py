"""Disk full, content damaged behind the store's back, and resources released on close."""

from __future__ import annotations

import gc
import io
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cacheness.storage import (
    BlobStore,
    CacheError,
    CacheIntegrityError,
    CacheKeyError,
    CacheStorageError,
    _store,
)
from cacheness.storage.backends import FilesystemBlobBackend

# ----------------------------------------------------------------- disk full


@pytest.fixture(autouse=True)
def _values_in_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests damage or count blob files: keep every value in the blob backend
    (values small enough for the metadata row are covered by test_inline.py)."""
    monkeypatch.setattr(_store, "INLINE_MAX", 0)


class DevFullBackend(FilesystemBlobBackend):
    """Once ``full`` is set, every blob write goes to /dev/full and the kernel answers ENOSPC.

    The temporary file is still created where the real backend creates it, so
    the test sees whether a failed write cleans up after itself.
    """

    full = False

    def _mkstemp(self) -> tuple[int, str]:
        fd, name = super()._mkstemp()
        if not self.full:
            return fd, name
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name


@pytest.fixture(params=["dev-full", "tmpfs"])
def full_disk_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """A store holding ``k`` = b"fits"; after that, large blob writes hit a full disk."""
    if request.param == "dev-full":
        root = tmp_path / "store"
        blobs = DevFullBackend(root)
        with BlobStore(root, blob_backend=blobs) as store:
            store.put(b"fits", key="k", metadata={"v": 1})
            blobs.full = True
            yield store
        return
    vol = request.getfixturevalue("small_disk")
    with BlobStore(vol / "store") as store:
        store.put(b"fits", key="k", metadata={"v": 1})
        yield store


def test_disk_full_put_keeps_the_old_value(full_disk_store: BlobStore) -> None:
    store = full_disk_store
    big = os.urandom(6 * 1024 * 1024)
    with pytest.raises(CacheStorageError) as info:
        store.put(big, key="k", metadata={"v": 2})
    assert info.value.key == "k"
    assert "disk is full" in str(info.value)
    with pytest.raises(CacheStorageError):
        store.put_file(io.BytesIO(big), key="k", metadata={"v": 3})
    with pytest.raises(CacheStorageError):
        store.put(big, key="new")
    tmp_dir = Path(str(store.root)) / "tmp"
    assert not tmp_dir.exists() or list(tmp_dir.iterdir()) == []
    assert store.list() == ["k"]
    assert store.get("k") == b"fits"
    assert store.get_metadata("k")["metadata"] == {"v": 1}  # type: ignore[index]
    assert store.verify().ok


# ------------------------------------------------- damage behind the back

BIG = 6 * 1024 * 1024  # above the store's whole-blob threshold: the streaming read path

DAMAGE_VALUES: dict[str, Any] = {
    "small-object": {"a": list(range(300))},
    "small-bytes": b"b" * 5000,
    "large-bytes": bytes(range(256)) * (BIG // 256),
    "large-object": {"blob": os.urandom(BIG)},
}


def _blob_path(store: BlobStore, key: str) -> Path:
    record = store.metadata_backend.get(key)
    assert record is not None
    assert isinstance(store.blob_backend, FilesystemBlobBackend)
    return store.blob_backend.path_for(record.blob_key)


@pytest.mark.parametrize("verify_on_read", [True, False])
@pytest.mark.parametrize("damage", ["deleted", "truncated", "flipped"])
@pytest.mark.parametrize("kind", list(DAMAGE_VALUES))
def test_damaged_blob_is_never_returned(
    tmp_path: Path, kind: str, damage: str, verify_on_read: bool
) -> None:
    if damage == "flipped" and not verify_on_read:
        pytest.skip("a same-size change is only caught by the hash, which is switched off")
    value = DAMAGE_VALUES[kind]
    with BlobStore(tmp_path / "s", verify_on_read=verify_on_read) as store:
        store.put(value, key="k")
        store.put("untouched", key="other")
        path = _blob_path(store, "k")
        data = path.read_bytes()
        if damage == "deleted":
            path.unlink()
        elif damage == "truncated":
            path.write_bytes(data[: len(data) // 2])
        else:
            mid = len(data) // 2
            path.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :])
        with pytest.raises(CacheIntegrityError) as info:
            store.get("k")
        assert info.value.key == "k"
        with pytest.raises(CacheIntegrityError):
            store.get_with_metadata("k")
        assert store.exists("k")  # nothing removed implicitly
        assert store.get("other") == "untouched"
        report = store.verify()
        assert report.missing == (["k"] if damage == "deleted" else [])
        assert report.corrupt == ([] if damage == "deleted" else ["k"])


@pytest.mark.parametrize("damage", ["deleted", "truncated", "flipped"])
def test_damaged_file_entry_through_open(tmp_path: Path, damage: str) -> None:
    data = os.urandom(3 * 1024 * 1024)
    with BlobStore(tmp_path / "s") as store:
        store.put_file(io.BytesIO(data), key="f")
        path = _blob_path(store, "f")
        if damage == "deleted":
            path.unlink()
            with pytest.raises(CacheIntegrityError):
                store.open("f")
            return
        raw = path.read_bytes()
        # XOR, not a fixed byte: random data may already end in that byte.
        damaged = raw[:1000] if damage == "truncated" else raw[:-1] + bytes([raw[-1] ^ 0xFF])
        assert damaged != raw
        path.write_bytes(damaged)
        with pytest.raises(CacheIntegrityError), store.open("f") as f:
            while f.read(1 << 20):
                pass


def test_damaged_compressed_entry_through_open(tmp_path: Path) -> None:
    with BlobStore(tmp_path / "s", compression="zstd") as store:
        store.put(b"z" * 100_000, key="z")
        path = _blob_path(store, "z")
        raw = path.read_bytes()
        path.write_bytes(raw[:-3] + b"abc")
        with pytest.raises(CacheIntegrityError):
            store.open("z")


def test_metadata_pointing_nowhere_is_missing(tmp_path: Path) -> None:
    with BlobStore(tmp_path / "s") as store:
        store.put({"a": 1}, key="k")
        record = store.metadata_backend.get("k")
        assert record is not None
        record.blob_key = "f" * 32
        store.metadata_backend.put(record)
        with pytest.raises(CacheIntegrityError, match="missing"):
            store.get("k")


# ------------------------------------------------------------ close() frees


def _exercise(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))

    def work(n: int) -> None:
        for i in range(20):
            store.put({"n": n, "i": i}, key=f"t{n}-{i}")
            assert store.get(f"t{n}-{i}") == {"n": n, "i": i}
        store.put_file(src, key=f"file{n}")
        with store.open(f"file{n}") as f:
            f.read()
        store.list()
        store.verify(f"t{n}-0")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.gc()


@pytest.mark.parametrize("backend", ["sqlite", "json", "memory", "sqlalchemy"])
def test_close_releases_every_handle(tmp_path: Path, backend: str) -> None:
    proc = psutil.Process()
    gc.collect()
    fds_before = proc.num_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if backend == "sqlalchemy":
            from cacheness.storage.backends import SqlAlchemyMetadataBackend

            meta: Any = SqlAlchemyMetadataBackend(f"sqlite:///{tmp_path / 'sa.db'}")
        else:
            meta = backend
        store = BlobStore(tmp_path / "s", backend=meta)
        _exercise(store, tmp_path)
        assert proc.num_fds() > fds_before or backend in ("json", "memory")
        store.close()
        del store
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert proc.num_fds() == fds_before
    open_files = [f.path for f in proc.open_files() if str(tmp_path) in f.path]
    assert open_files == []


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "s")
    store.put(1, key="k")
    store.close()
    for call in (
        lambda: store.get("k"),
        lambda: store.exists("k"),
        lambda: store.list(),
        lambda: store.verify(),
        lambda: store.gc(),
        lambda: store.put_file(io.BytesIO(b"x")),
    ):
        with pytest.raises(CacheError) as info:
            call()
        assert "closed" in str(info.value)
    with BlobStore(tmp_path / "s") as again:
        assert again.get("k") == 1
        with pytest.raises(CacheKeyError):
            again.open("absent")


def test_short_lived_threads_do_not_pile_up_connections(tmp_path: Path) -> None:
    proc = psutil.Process()
    with BlobStore(tmp_path / "s") as store:
        store.put(1, key="k")
        fds_before = proc.num_fds()
        for _ in range(60):  # a thread per request, as some servers do
            t = threading.Thread(target=lambda: store.put(store.get("k"), key="k"))
            t.start()
            t.join()
        assert proc.num_fds() <= fds_before + 6
        assert store.get("k") == 1


# ----------------------------------------------- gc() between a put_file's blob and row


def _gc_before_the_commit(store: BlobStore, when: Any = None) -> list[int]:
    """Run ``store.gc()`` (or ``when()``) once, right before the next write lock
    is taken: the moment a put_file has published its blob and not yet its row."""
    backend = store.metadata_backend
    real = backend.write_lock
    ran: list[int] = []

    def write_lock() -> Any:
        if not ran:
            ran.append(1)
            backend.write_lock = real  # type: ignore[method-assign]
            store.gc() if when is None else when()
        return real()

    backend.write_lock = write_lock  # type: ignore[method-assign]
    return ran


def test_put_file_survives_gc_freeing_its_blob_before_the_row(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    content = os.urandom(300_000)
    src.write_bytes(content)
    with BlobStore(tmp_path / "s") as store:
        ran = _gc_before_the_commit(store)
        key = store.put_file(src, key="data")
        assert ran  # the gc ran in the gap, and freed the blob: the source was read again
        with store.open(key) as f:
            assert f.read() == content
        assert store.verify().ok


def test_put_file_from_a_pipe_says_so_when_gc_freed_its_blob(tmp_path: Path) -> None:
    content = os.urandom(300_000)
    with BlobStore(tmp_path / "s") as store:
        store.put(b"kept", key="old")
        r, w = os.pipe()
        threading.Thread(target=lambda: (os.write(w, content), os.close(w)), daemon=True).start()
        _gc_before_the_commit(store)
        with open(r, "rb") as pipe, pytest.raises(CacheStorageError, match="not seekable"):
            store.put_file(pipe, key="data")
        assert store.list() == ["old"] and store.get("old") == b"kept"
        assert store.verify().ok and store.gc() == 0  # nothing left behind


def test_put_file_refuses_a_source_that_changed_when_read_again(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    with BlobStore(tmp_path / "s") as store:

        def gc_then_change() -> None:
            store.gc()
            src.write_bytes(os.urandom(300_000))

        _gc_before_the_commit(store, gc_then_change)
        with pytest.raises(CacheStorageError, match="changed while it was being stored"):
            store.put_file(src, key="data")
        assert store.list() == [] and store.verify().ok and store.gc() == 0


def test_a_damaged_array_shape_is_refused_before_it_allocates(tmp_path: Path) -> None:
    import json
    import struct
    import tracemalloc

    import numpy as np

    arr = np.arange(1_000_000, dtype=np.float64)  # 8 MB: read in a stream, hashed at the end
    with BlobStore(tmp_path, compression="none") as store:
        store.put(arr, key="a")
        path = store.blob_backend.path_for(store.metadata_backend.get("a").blob_key)
        blob = path.read_bytes()
        (hlen,) = struct.unpack("<I", blob[4:8])
        header = json.loads(blob[8 : 8 + hlen])
        header["meta"]["shape"] = [200_000_000]  # 1.6 GB, bytes and hash unchanged
        new = json.dumps(header).encode()
        body = blob[8 + hlen + (-(8 + hlen) % 64) :]
        path.write_bytes(
            blob[:4] + struct.pack("<I", len(new)) + new + b"\0" * (-(8 + len(new)) % 64) + body
        )
        tracemalloc.start()
        try:
            with pytest.raises(CacheIntegrityError, match="shape"):
                store.get("a")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 50_000_000  # the 1.6 GB array was never allocated
