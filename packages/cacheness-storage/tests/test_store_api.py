"""BlobStore's public API on every metadata/blob backend pairing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import xxhash
from cacheness.storage import (
    BlobStore,
    CacheConfigError,
    CacheError,
    CacheIntegrityError,
    CacheKeyError,
    CacheSerializationError,
    CacheStorageError,
    VerifyReport,
)

VALUES: list[Any] = [
    {"a": 1, "b": [1, 2, 3], "c": {"d": None}},
    b"raw bytes \x00\xff",
    bytearray(b"mutable"),
    "text ü🔑",
    12345678901234567890,
    3.25,
    None,
    (1, "two", 3.0),
    list(range(1000)),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_put_get_round_trip(store: BlobStore, value: Any) -> None:
    key = store.put(value, key="k")
    assert key == "k"
    got = store.get("k")
    assert got == value
    assert type(got) is type(value)


def test_memoryview_comes_back_as_bytes(store: BlobStore) -> None:
    store.put(memoryview(b"view"), key="mv")
    assert store.get("mv") == b"view" and type(store.get("mv")) is bytes


def test_get_absent_returns_default(store: BlobStore) -> None:
    assert store.get("absent") is None
    marker = object()
    assert store.get("absent", default=marker) is marker
    assert store.get_with_metadata("absent") is None


def test_put_without_key_is_content_addressed(store: BlobStore) -> None:
    k1 = store.put({"x": 1})
    k2 = store.put({"x": 1})
    k3 = store.put({"x": 2})
    assert k1 == k2 != k3
    assert re.fullmatch(r"[0-9a-f]{32}", k1)
    assert store.get(k1) == {"x": 1}


def test_put_without_key_when_not_content_addressable(make_store: Any) -> None:
    store = make_store(content_addressable=False)
    k1 = store.put({"x": 1})
    k2 = store.put({"x": 1})
    assert k1 != k2
    assert store.get(k1) == store.get(k2) == {"x": 1}
    assert store.delete(k1)
    assert store.get(k2) == {"x": 1}


def test_overwrite_replaces_value(store: BlobStore) -> None:
    store.put("one", key="k")
    store.put("two", key="k")
    assert store.get("k") == "two"
    assert store.list() == ["k"]


def test_exists_and_delete(store: BlobStore) -> None:
    assert not store.exists("k")
    assert store.delete("k") is False
    store.put(1, key="k")
    assert store.exists("k")
    assert store.delete("k") is True
    assert not store.exists("k")
    assert store.get("k") is None
    assert store.delete("k") is False


def test_list_prefix_and_metadata_filter(store: BlobStore) -> None:
    store.put(1, key="runs/a", metadata={"team": "x", "n": 1})
    store.put(2, key="runs/b", metadata={"team": "y", "n": 1})
    store.put(3, key="models/a", metadata={"team": "x", "n": 2})
    store.put(4, key="Runs/c")
    assert store.list() == ["Runs/c", "models/a", "runs/a", "runs/b"]
    assert store.list(prefix="runs/") == ["runs/a", "runs/b"]
    assert store.list(metadata_filter={"team": "x"}) == ["models/a", "runs/a"]
    assert store.list(prefix="runs/", metadata_filter={"n": 1, "team": "y"}) == ["runs/b"]
    assert store.list(metadata_filter={"n": True}) == []


def test_list_refuses_arguments_of_the_wrong_type(store: BlobStore) -> None:
    from cacheness.storage.errors import CacheConfigError, CacheKeyError

    store.put(1, key="a")
    with pytest.raises(CacheKeyError, match="prefix must be a str"):
        store.list(prefix=5)  # type: ignore[arg-type]
    with pytest.raises(CacheConfigError, match="metadata_filter must be a dict"):
        store.list(metadata_filter=5)  # type: ignore[arg-type]
    assert store.list() == ["a"]


def test_get_metadata_system_fields(store: BlobStore) -> None:
    before = datetime.now(UTC)
    store.put({"payload": "x" * 5000}, key="k", metadata={"owner": "ana"})
    meta = store.get_metadata("k")
    assert meta is not None
    assert meta["key"] == "k"
    assert meta["handler"] == "pickle" and meta["data_type"] == "dict"
    assert meta["codec"] == "lz4"
    assert isinstance(meta["size"], int) and meta["size"] > 0
    assert meta["content_hash"].startswith("xxh3_128:")
    assert meta["created_at"].tzinfo is not None
    assert meta["created_at"].utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= meta["created_at"] <= datetime.now(UTC)
    assert meta["signature_valid"] is None
    assert meta["metadata"] == {"owner": "ana"}
    assert store.get_metadata("absent") is None


def test_size_is_the_stored_bytes(file_store: BlobStore, blob_files: Any) -> None:
    file_store.inline_max = 0  # a blob file to measure, not an inline value
    file_store.put(b"x" * 5000, key="k")
    meta = file_store.get_metadata("k")
    assert meta is not None
    (blob,) = blob_files(file_store.root)
    assert meta["size"] == blob.stat().st_size
    assert meta["content_hash"].split(":")[1] == blob.name


def test_get_with_metadata(store: BlobStore) -> None:
    store.put([1, 2], key="k", metadata={"a": 1})
    got = store.get_with_metadata("k")
    assert got is not None
    value, meta = got
    assert value == [1, 2]
    assert meta["metadata"] == {"a": 1} and meta["key"] == "k"


def test_update_metadata_merges(store: BlobStore) -> None:
    store.put(1, key="k", metadata={"a": 1, "b": 2})
    assert store.update_metadata("k", {"b": 3, "c": [4]}) is True
    meta = store.get_metadata("k")
    assert meta is not None and meta["metadata"] == {"a": 1, "b": 3, "c": [4]}
    assert store.list(metadata_filter={"b": 3}) == ["k"]
    assert store.update_metadata("absent", {"x": 1}) is False
    assert store.get("k") == 1


@pytest.mark.parametrize(
    "bad", [{"f": object()}, {"f": {1, 2}}, {"f": float("nan")}, {1: "int key"}, ["not", "a dict"]]
)
def test_non_json_metadata_is_refused_and_changes_nothing(store: BlobStore, bad: Any) -> None:
    store.put("old", key="k", metadata={"keep": True})
    with pytest.raises(CacheSerializationError) as info:
        store.put("new", key="k", metadata=bad)
    assert info.value.key == "k"
    with pytest.raises(CacheSerializationError):
        store.put("new", key="other", metadata=bad)
    with pytest.raises(CacheSerializationError) as info2:
        store.update_metadata("k", bad)
    assert info2.value.key == "k"
    assert store.get("k") == "old"
    meta = store.get_metadata("k")
    assert meta is not None and meta["metadata"] == {"keep": True}
    assert store.list() == ["k"]


def test_unserialisable_value_is_typed_error_and_changes_nothing(store: BlobStore) -> None:
    store.put("old", key="k")
    with pytest.raises(CacheSerializationError) as info:
        store.put((x for x in [1]), key="k")  # neither pickle nor dill can store a generator
    assert info.value.key == "k"
    assert store.get("k") == "old"
    assert store.verify().ok


@pytest.mark.parametrize("bad", ["", "a\x00b", 5, None, b"bytes", "\ud800"])
def test_bad_keys_are_cache_key_errors(store: BlobStore, bad: Any) -> None:
    for call in (
        lambda: store.get(bad),
        lambda: store.exists(bad),
        lambda: store.delete(bad),
        lambda: store.get_metadata(bad),
        lambda: store.update_metadata(bad, {}),
        lambda: store.open(bad),
    ):
        with pytest.raises(CacheKeyError):
            call()
    if bad is not None:  # None means "generate a key" for put and "all keys" for verify
        with pytest.raises(CacheKeyError):
            store.put(1, key=bad)
        with pytest.raises(CacheKeyError):
            store.verify(bad)
    assert isinstance(CacheKeyError("x"), ValueError)
    assert store.list() == []


def test_put_file_and_open_stream(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    data = bytes(range(256)) * 40_000  # 10 MB
    src.write_bytes(data)
    key = store.put_file(src, key="file", metadata={"name": "in.bin"})
    assert key == "file"
    meta = store.get_metadata("file")
    assert meta is not None and meta["size"] == len(data) and meta["codec"] == "none"
    assert meta["metadata"] == {"name": "in.bin"}
    with store.open("file") as f:
        out = b"".join(iter(lambda: f.read(1 << 20), b""))
    assert out == data
    assert store.get("file") == data
    with open(src, "rb") as fh:
        k2 = store.put_file(fh)  # binary file object, content-addressed key
    assert store.get(k2) == data


def test_put_file_refuses_text_and_non_files(store: BlobStore, tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("hello")
    with open(p) as text, pytest.raises(CacheSerializationError):
        store.put_file(text, key="t")  # type: ignore[arg-type]
    with pytest.raises(CacheSerializationError):
        store.put_file(123, key="t")  # type: ignore[arg-type]
    with pytest.raises(CacheStorageError) as info:
        store.put_file(tmp_path / "absent", key="t")
    assert info.value.key == "t" and "absent" in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert store.list() == []


def test_open_of_a_serialised_entry_gives_its_stored_bytes(store: BlobStore) -> None:
    store.put(b"abc" * 1000, key="k")
    with store.open("k") as f:
        assert f.read() == b"abc" * 1000
    with pytest.raises(CacheKeyError):
        store.open("absent")


def test_verify_and_gc_on_a_clean_store(store: BlobStore) -> None:
    for i in range(5):
        store.put({"i": i}, key=f"k{i}")
    report = store.verify()
    assert isinstance(report, VerifyReport)
    assert report.ok and report.checked == 5
    assert (report.corrupt, report.missing, report.orphaned, report.bad_signature) == ([],) * 4
    assert store.verify("k1").checked == 1
    assert store.verify("absent").checked == 0
    assert store.gc() == 0
    assert [store.get(f"k{i}") for i in range(5)] == [{"i": i} for i in range(5)]


def test_close_and_context_manager(make_store: Any) -> None:
    store = make_store()
    with store as s:
        s.put(1, key="k")
    with pytest.raises(CacheError):
        store.get("k")
    with pytest.raises(CacheError):
        store.put(1, key="k")
    store.close()  # idempotent


def test_reopen_sees_committed_data(make_store: Any) -> None:
    if make_store.pairing == "memory+memory":
        pytest.skip("an in-memory store forgets on close")
    with make_store() as s:
        s.put({"v": 1}, key="k", metadata={"m": 1})
    with make_store() as s:
        assert s.get("k") == {"v": 1}
        assert s.list(metadata_filter={"m": 1}) == ["k"]


def test_sha256_hash_algorithm(make_store: Any) -> None:
    store = make_store(hash_algorithm="sha256", compression="none")
    key = store.put(b"payload")
    assert key == hashlib.sha256(b"payload").hexdigest()
    meta = store.get_metadata(key)
    assert meta is not None and meta["content_hash"] == "sha256:" + key
    assert store.get(key) == b"payload"
    assert store.verify().ok


def test_sha256_put_file(file_store: BlobStore, tmp_path: Path) -> None:
    with BlobStore(tmp_path / "s2", hash_algorithm="sha256") as store:
        data = b"q" * 3_000_000
        key = store.put_file(io.BytesIO(data))
        assert key == hashlib.sha256(data).hexdigest()
        assert store.get(key) == data


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"backend": "nosuch"}, "sqlite"),
        ({"blob_backend": "nosuch"}, "file"),
        ({"blob_backend": "gopher://x"}, "memory"),
        ({"hash_algorithm": "md5"}, "sha256"),
        ({"compression": "rar"}, "zstd"),
        ({"custom_signed_fields": ["key", "colour"]}, "content_hash"),
        ({"require_signatures": True}, "signing_key"),
        ({"signing_key": b"short"}, "32"),
    ],
)
def test_bad_configuration_is_config_error(tmp_path: Path, options: Any, needle: str) -> None:
    with pytest.raises(CacheConfigError) as info:
        BlobStore(tmp_path / "s", **options)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_memory_store_needs_no_path() -> None:
    with BlobStore(backend="memory", blob_backend="memory") as store:
        store.put(1, key="k")
        assert store.get("k") == 1
    with pytest.raises(CacheConfigError):
        BlobStore(backend="sqlite", blob_backend="memory")
    with pytest.raises(CacheConfigError):
        BlobStore(backend="memory", blob_backend="file")


# ------------------------------------------------------------- JSON backend


def test_json_metadata_file_is_always_complete(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with BlobStore(root, backend="json") as store:
        for i in range(20):
            store.put(i, key=f"k{i}")
            doc = json.loads((root / "metadata.json").read_text())
            assert len(doc["entries"]) == i + 1
        store.delete("k0")
        assert len(json.loads((root / "metadata.json").read_text())["entries"]) == 19
        leftovers = [p.name for p in root.iterdir() if p.name.endswith(".tmp")]
        assert leftovers == []


def test_json_two_instances_see_each_other(tmp_path: Path) -> None:
    with (
        BlobStore(tmp_path / "s", backend="json") as a,
        BlobStore(tmp_path / "s", backend="json") as b,
    ):
        a.put(1, key="from-a")
        assert b.get("from-a") == 1
        b.put(2, key="from-b")
        b.delete("from-a")
        assert a.list() == ["from-b"]


def test_json_directory_deleted_before_close(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = BlobStore(root, backend="json")
    store.put({"x": 1}, key="k")
    shutil.rmtree(root)
    store.close()  # not an error


def test_json_corrupt_file_is_backend_error(tmp_path: Path) -> None:
    from cacheness.storage import CacheBackendError

    root = tmp_path / "s"
    with BlobStore(root, backend="json") as store:
        store.put(1, key="k")
    (root / "metadata.json").write_text("{not json")
    with BlobStore(root, backend="json") as store, pytest.raises(CacheBackendError) as info:
        store.get("k")
    assert "metadata.json" in str(info.value)


# ----------------------------------------------------------- SQLite backend


def test_sqlite_uses_wal(file_store: BlobStore) -> None:
    file_store.put(1, key="k")
    con = sqlite3.connect(file_store.root / "metadata.sqlite")  # type: ignore[operator]
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_sqlite_url_backend(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with BlobStore(tmp_path / "s", backend=url) as store:
        store.put(1, key="k")
        assert store.metadata_backend.name == "sqlite"
    with BlobStore(tmp_path / "s", backend=url) as store:
        assert store.get("k") == 1


@pytest.mark.integration
def test_postgres_url_string(postgres_url: str, tmp_path: Path) -> None:
    with BlobStore(tmp_path / "s", backend=postgres_url) as store:
        store.put({"a": 1}, key="'; DROP TABLE cacheness_entries; --", metadata={"t": "x"})
        assert store.metadata_backend.name == "sqlalchemy"
    with BlobStore(tmp_path / "s", backend=postgres_url) as store:
        assert store.list() == ["'; DROP TABLE cacheness_entries; --"]
        assert store.get("'; DROP TABLE cacheness_entries; --") == {"a": 1}


def test_keep_inline_hands_small_values_to_the_caller(file_store: BlobStore) -> None:
    kept: list[Any] = []
    small = {"a": [1, 2, 3]}
    record = file_store.put_record(small, key="small", metadata={"m": 1}, keep_inline=kept.append)
    assert kept == [record] and record.inline is not None and record.blob_key == ""
    assert file_store.list() == [] and not file_store.exists("small")  # nothing written here
    assert file_store.get_record(record) == small
    meta = file_store.describe(record)
    assert meta["size"] == record.size == len(record.inline)
    assert meta["metadata"] == {"m": 1} and meta["content_hash"] == record.content_hash
    big = os.urandom(100_000)  # over the inline limit: stored as usual, the callable not called
    file_store.put_record(big, key="big", keep_inline=kept.append)
    assert len(kept) == 1 and file_store.list() == ["big"] and file_store.get("big") == big


def _fields(record: Any) -> tuple[Any, ...]:
    return (
        record.handler,
        record.codec,
        record.size,
        record.content_hash,
        record.info,
        record.inline,
    )


@pytest.mark.parametrize(
    "value",
    [{"a": [1, 2, 3]}, b"raw", "text", list(range(50))],
    ids=["dict", "bytes", "str", "list"],
)
def test_get_inline_loads_what_get_record_loads(file_store: BlobStore, value: Any) -> None:
    kept: list[Any] = []
    record = file_store.put_record(value, key="k", keep_inline=kept.append)
    got = file_store.get_inline("k", *_fields(record))
    assert got == value and type(got) is type(value)
    assert got == file_store.get_record(record)
    # The info as a metadata row holds it (JSON text) loads the same.
    handler, codec, size, content_hash, info, data = _fields(record)
    as_text = file_store.get_inline("k", handler, codec, size, content_hash, json.dumps(info), data)
    assert as_text == value and type(as_text) is type(value)


def test_get_inline_refuses_tampered_bytes(file_store: BlobStore) -> None:
    record = file_store.put_record({"a": "x" * 64}, key="k", keep_inline=lambda r: None)
    handler, codec, size, content_hash, info, data = _fields(record)
    at = data.index(b"x" * 64) + 10
    flipped = data[:at] + b"y" + data[at + 1 :]  # same size, still a valid pickle
    with pytest.raises(CacheIntegrityError):
        file_store.get_inline("k", handler, codec, size, content_hash, info, flipped)
    with pytest.raises(CacheIntegrityError):  # another size than recorded
        file_store.get_inline("k", handler, codec, size, content_hash, info, data + b".")
    with pytest.raises(CacheIntegrityError):  # not a pickle at all, even with its hash
        junk = b"\x80\x05junk"
        file_store.get_inline(
            "k",
            handler,
            codec,
            len(junk),
            "xxh3_128:" + xxhash.xxh3_128_hexdigest(junk),
            info,
            junk,
        )
    assert file_store.get_inline("k", handler, codec, size, content_hash, info, data) == {
        "a": "x" * 64
    }


def test_get_plain_pickle_loads_and_checks_like_get_inline(tmp_path: Path) -> None:
    with BlobStore(tmp_path / "u") as store:
        record = store.put_record({"a": "x" * 64}, key="k", keep_inline=lambda r: None)
        assert (record.handler, record.codec, record.info) == ("pickle", "none", {})
        data, content_hash = record.inline, record.content_hash
        assert data is not None
        assert store.get_plain_pickle("k", content_hash, data) == {"a": "x" * 64}
        at = data.index(b"x" * 64) + 10
        with pytest.raises(CacheIntegrityError):  # same size, still a valid pickle
            store.get_plain_pickle("k", content_hash, data[:at] + b"y" + data[at + 1 :])
        with pytest.raises(CacheIntegrityError):  # a hash of another algorithm's name
            store.get_plain_pickle("k", "sha256:" + content_hash.split(":")[1], data)
        junk = b"\x80\x05junk"  # not a pickle at all, even with its hash
        with pytest.raises(CacheIntegrityError):
            store.get_plain_pickle("k", "xxh3_128:" + xxhash.xxh3_128_hexdigest(junk), junk)
    with BlobStore(tmp_path / "s", signing_key=b"k" * 32) as signed:
        # No signature given: a strict signed store refuses it, as get_inline does.
        with pytest.raises(CacheIntegrityError):
            signed.get_plain_pickle("k", content_hash, data)
        assert signed.get_plain_pickle("k", content_hash, data, strict_verification=False) == {
            "a": "x" * 64
        }


def test_get_inline_checks_signatures(tmp_path: Path) -> None:
    unsigned = BlobStore(tmp_path / "u")
    record = unsigned.put_record({"a": 1}, key="k", keep_inline=lambda r: None)
    unsigned.close()
    with BlobStore(tmp_path / "s", signing_key=b"k" * 32) as signed:
        # No signature on the fields given: a strict signed store refuses the value.
        with pytest.raises(CacheIntegrityError):
            signed.get_inline("k", *_fields(record))
        assert signed.get_inline("k", *_fields(record), strict_verification=False) == {"a": 1}
