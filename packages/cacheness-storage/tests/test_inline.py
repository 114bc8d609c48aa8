"""Small values kept in the metadata row (``inline``) instead of a blob file."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cacheness.storage import (
    BlobStore,
    CacheConfigError,
    CacheIntegrityError,
    CacheSerializationError,
)

from .conftest import StoreFactory

SMALL = {"id": 1, "name": "user-1", "tags": ["a", "b"], "payload": "x" * 900}
# Random bytes do not compress: well over the inline limit once encoded.
BIG = random.Random(0).randbytes(64 * 1024)


def _inline_row(root: Path, key: str) -> tuple[str, bytes | None]:
    with sqlite3.connect(root / "metadata.sqlite") as conn:
        row = conn.execute(
            "SELECT blob_key, inline_value FROM entries WHERE key = ?", (key,)
        ).fetchone()
    conn.close()
    return row  # type: ignore[no-any-return]


def test_round_trip_on_every_backend(make_store: StoreFactory) -> None:
    store = make_store()
    values: dict[str, Any] = {
        "dict": SMALL,
        "bytes": b"abc" * 10,
        "bytearray": bytearray(b"xyz"),
        "none": None,
        "big": BIG,
    }
    for key, value in values.items():
        store.put(value, key=key, metadata={"k": key})
    for key, value in values.items():
        got = store.get(key)
        assert got == value and type(got) is type(value)
        meta = store.get_metadata(key)
        assert meta is not None and meta["metadata"] == {"k": key}
    rec = store.metadata_backend.get("dict")
    assert rec is not None and rec.inline is not None and rec.blob_key == ""
    big = store.metadata_backend.get("big")
    assert big is not None and big.inline is None and big.blob_key
    assert sorted(store.list()) == sorted(values)
    assert store.verify().ok
    assert store.delete("dict") and store.get("dict") is None


def test_inline_values_survive_reopening(tmp_path: Path) -> None:
    with BlobStore(tmp_path, backend="json") as store:
        store.put(SMALL, key="k")
    with BlobStore(tmp_path, backend="json") as store:
        assert store.get("k") == SMALL
        rec = store.metadata_backend.get("k")
        assert rec is not None and rec.inline is not None


def test_small_values_write_no_blob_file(file_store: BlobStore, blob_files: Any) -> None:
    file_store.put(SMALL, key="a")
    assert blob_files(file_store.root) == []
    blob_key, inline = _inline_row(file_store.root, "a")
    assert blob_key == "" and inline is not None and len(inline) < 2000


def test_big_values_are_still_deduplicated(file_store: BlobStore, blob_files: Any) -> None:
    for i in range(5):
        file_store.put(BIG, key=f"k{i}")
    assert len(blob_files(file_store.root)) == 1
    file_store.put(SMALL, key="k0")  # k0 becomes inline; the blob is still shared
    assert len(blob_files(file_store.root)) == 1
    for i in range(1, 5):
        assert file_store.delete(f"k{i}")
    assert blob_files(file_store.root) == []  # freed with its last reference
    assert file_store.get("k0") == SMALL


def test_tampered_inline_value_is_detected(file_store: BlobStore) -> None:
    file_store.put(SMALL, key="k")
    _, inline = _inline_row(file_store.root, "k")
    assert inline is not None
    damaged = bytes([inline[0] ^ 1]) + inline[1:]
    with sqlite3.connect(file_store.root / "metadata.sqlite") as conn:
        conn.execute("UPDATE entries SET inline_value = ? WHERE key = ?", (damaged, "k"))
    conn.close()
    with pytest.raises(CacheIntegrityError, match="does not match its hash"):
        file_store.get("k")
    report = file_store.verify()
    assert report.corrupt == ["k"] and not report.ok
    report = file_store.verify(repair=True)
    assert report.repaired == ["k"] and file_store.get("k") is None


def test_malicious_inline_pickle_is_never_loaded_unsigned(tmp_path: Path) -> None:
    key = b"k" * 32
    with BlobStore(tmp_path, signing_key=key, require_signatures=True) as store:
        store.put(SMALL, key="k")
    marker = tmp_path / "pwned"
    payload = (
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )  # a pickle that runs a shell command
    with sqlite3.connect(tmp_path / "metadata.sqlite") as conn:
        conn.execute(
            "UPDATE entries SET inline_value = ?, codec = 'none', signature = NULL WHERE key = 'k'",
            (payload,),
        )
    conn.close()
    with BlobStore(tmp_path, signing_key=key, require_signatures=True) as store:
        with pytest.raises(CacheIntegrityError, match="unsigned"):
            store.get("k")
        with pytest.raises(CacheIntegrityError):
            store.get("k", strict_verification=False)
    assert not marker.exists()


def test_signed_inline_with_swapped_bytes_fails_hash(tmp_path: Path) -> None:
    key = b"s" * 32
    with BlobStore(tmp_path, signing_key=key) as store:
        store.put(SMALL, key="a")
        store.put({"other": 1}, key="b")
        assert store.get("a") == SMALL
    _, other = _inline_row(tmp_path, "b")
    with sqlite3.connect(tmp_path / "metadata.sqlite") as conn:
        conn.execute("UPDATE entries SET inline_value = ? WHERE key = 'a'", (other,))
    conn.close()
    with BlobStore(tmp_path, signing_key=key) as store, pytest.raises(CacheIntegrityError):
        store.get("a")


def test_gc_leaves_inline_entries_alone(file_store: BlobStore, blob_files: Any) -> None:
    file_store.put(SMALL, key="small")
    file_store.put(BIG, key="big")
    assert file_store.gc() == 0
    assert file_store.get("small") == SMALL and file_store.get("big") == BIG
    file_store.delete("big")
    assert file_store.gc() == 0  # the blob went with its last reference
    assert file_store.get("small") == SMALL
    assert file_store.verify().ok


def test_overwrite_between_inline_and_blob(file_store: BlobStore, blob_files: Any) -> None:
    file_store.put(BIG, key="k")
    assert len(blob_files(file_store.root)) == 1
    file_store.put(SMALL, key="k")
    assert blob_files(file_store.root) == []  # the replaced blob is freed
    assert file_store.get("k") == SMALL
    file_store.put(BIG, key="k")
    assert file_store.get("k") == BIG and len(blob_files(file_store.root)) == 1


def test_inline_max_zero_keeps_every_value_in_blobs(tmp_path: Path, blob_files: Any) -> None:
    with BlobStore(tmp_path, inline_max=0) as store:
        store.put(SMALL, key="k")
        assert len(blob_files(tmp_path)) == 1 and store.get("k") == SMALL
    with pytest.raises(CacheConfigError, match="inline_max"):
        BlobStore(tmp_path, inline_max=-1)


def test_put_record_and_get_record(store: BlobStore) -> None:
    record = store.put_record(SMALL, key="k", metadata={"a": 1})
    assert record.key == "k" and record.metadata == {"a": 1}
    assert store.get_record(record) == SMALL
    big = store.put_record(BIG, key="big")
    assert big.inline is None and store.get_record(big) == BIG
    store.delete("big")  # its blob goes with it: the record in hand names nothing
    assert store.get_record(big, "gone") == "gone"


def test_open_streams_inline_bytes(store: BlobStore) -> None:
    store.put(b"hello" * 100, key="b")
    with store.open("b") as f:
        assert f.read() == b"hello" * 100


@pytest.mark.parametrize("value", [SMALL, {"big": BIG}, [1, 2, 3]])
def test_open_on_a_non_bytes_entry_says_to_use_get(store: BlobStore, value: Any) -> None:
    store.put(value, key="v")
    with pytest.raises(CacheSerializationError, match=r"put_file\(\).*get\(\)") as info:
        store.open("v")
    assert info.value.key == "v"


def test_open_on_a_numpy_entry_says_to_use_get(store: BlobStore) -> None:
    np = pytest.importorskip("numpy")
    store.put(np.arange(10), key="a")
    with pytest.raises(CacheSerializationError, match="Use get"):
        store.open("a")


def test_repair_keeps_a_value_put_again_after_the_check(file_store: BlobStore) -> None:
    """verify(repair=True) finds k corrupt; before it drops k, another writer puts k
    again (held in its row, as the damaged value was): the new value stays."""
    file_store.put(SMALL, key="k")
    _, inline = _inline_row(file_store.root, "k")
    assert inline is not None
    with sqlite3.connect(file_store.root / "metadata.sqlite") as conn:
        conn.execute(
            "UPDATE entries SET inline_value = ? WHERE key = ?",
            (bytes([inline[0] ^ 1]) + inline[1:], "k"),
        )
    conn.close()
    backend = file_store.metadata_backend
    real = backend.write_lock

    def write_lock() -> object:  # the repair's lock: the other writer goes first
        backend.write_lock = real  # type: ignore[method-assign]
        file_store.put({"new": 1}, key="k")
        return real()

    backend.write_lock = write_lock  # type: ignore[method-assign]
    report = file_store.verify(repair=True)
    assert report.corrupt == ["k"] and report.repaired == []
    assert file_store.get("k") == {"new": 1}
    assert file_store.verify().ok
