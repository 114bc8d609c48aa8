"""Signing, tamper resistance, key confinement and what the logs never show."""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import sqlite3
import stat
from pathlib import Path
from typing import Any

import lz4.frame
import pytest
from cacheness.storage import (
    VALID_SIGNED_FIELDS,
    BlobStore,
    CacheConfigError,
    CacheIntegrityError,
    CacheKeyError,
    _store,
)
from cacheness.storage._hashing import hash_chunks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture(autouse=True)
def _values_in_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests damage or count blob files: keep every value in the blob backend
    (values small enough for the metadata row are covered by test_inline.py)."""
    monkeypatch.setattr(_store, "INLINE_MAX", 0)


KEY = bytes(range(32, 64))
OTHER_KEY = bytes(range(64, 96))


class Evil:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def _evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(Evil(marker), protocol=5)


def _tamper(store: BlobStore, key: str, **changes: Any) -> None:
    """Rewrite an entry's metadata behind the store's back (no re-signing)."""
    record = store.metadata_backend.get(key)
    assert record is not None
    store.metadata_backend.put(dataclasses.replace(record, **changes))


@pytest.fixture(params=["sqlite", "json"])
def signed_root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    return tmp_path / "store", request.param


def _open(root_backend: tuple[Path, str], **kw: Any) -> BlobStore:
    root, backend = root_backend
    kw.setdefault("signing_key", KEY)
    return BlobStore(root, backend=backend, **kw)


# ----------------------------------------------------------------- signing


def test_signed_entries_verify(signed_root: tuple[Path, str]) -> None:
    with _open(signed_root) as store:
        store.put({"a": 1}, key="k", metadata={"m": 1})
        meta = store.get_metadata("k")
        assert meta is not None and meta["signature_valid"] is True
        assert len(meta["signature"]) == 64
        assert store.get("k") == {"a": 1}
        store.update_metadata("k", {"m": 2})  # re-signed
        assert store.get_metadata("k")["signature_valid"] is True  # type: ignore[index]
        assert store.verify().ok


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "signing.key"
    with BlobStore(tmp_path / "s", signing_key=key_file) as store:
        store.put(1, key="k")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes()) >= 32
    with BlobStore(tmp_path / "s", signing_key=str(key_file), require_signatures=True) as store:
        assert store.get("k") == 1
        assert store.get_metadata("k")["signature_valid"] is True  # type: ignore[index]


def test_env_var_hex_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHENESS_SIGNING_KEY", KEY.hex())
    with BlobStore(tmp_path / "s") as store:
        store.put(1, key="k")
    with BlobStore(tmp_path / "s", signing_key=KEY, require_signatures=True) as store:
        assert store.get("k") == 1
    monkeypatch.setenv("CACHENESS_SIGNING_KEY", "not hex")
    with pytest.raises(CacheConfigError):
        BlobStore(tmp_path / "s")


def test_custom_signed_fields_validated() -> None:
    with pytest.raises(ValueError) as info:
        BlobStore(backend="memory", blob_backend="memory", signing_key=KEY,
                  custom_signed_fields=["key", "colour"])  # fmt: skip
    message = str(info.value)
    assert "colour" in message
    assert all(name in message for name in VALID_SIGNED_FIELDS)
    assert "signature_valid" not in VALID_SIGNED_FIELDS
    assert {"key", "data_type", "handler", "codec", "size", "content_hash", "created_at"} <= (
        VALID_SIGNED_FIELDS
    )


def test_custom_signed_fields_always_cover_how_bytes_are_loaded(tmp_path: Path) -> None:
    with BlobStore(tmp_path / "s", signing_key=KEY, custom_signed_fields=["key"]) as store:
        store.put(b"data", key="k", metadata={"m": 1})
        _tamper(store, "k", metadata={"m": 2})  # not signed: allowed to change
        assert store.get("k") == b"data"
        _tamper(store, "k", handler="pickle")  # always signed
        with pytest.raises(CacheIntegrityError):
            store.get("k")


def test_wrong_key_strict_and_lenient(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with BlobStore(tmp_path / "s", signing_key=KEY) as store:
        store.put({"v": 1}, key="k")
    with BlobStore(tmp_path / "s", signing_key=OTHER_KEY) as store:
        with pytest.raises(CacheIntegrityError) as info:
            store.get("k")
        assert info.value.key == "k"
        with caplog.at_level(logging.WARNING, logger="cacheness"):
            assert store.get("k", strict_verification=False) == {"v": 1}
        assert any(r.levelno == logging.WARNING and "'k'" in r.getMessage() for r in caplog.records)
        value, meta = store.get_with_metadata("k", strict_verification=False)  # type: ignore[misc]
        assert value == {"v": 1} and meta["signature_valid"] is False
        assert store.get_metadata("k")["signature_valid"] is False  # type: ignore[index]
        with pytest.raises(CacheIntegrityError):
            store.update_metadata("k", {"x": 1})  # never re-sign a bad entry
        assert store.verify().bad_signature == ["k"]


def test_unsigned_entry_in_signed_store(tmp_path: Path) -> None:
    with BlobStore(tmp_path / "s") as store:
        store.put(1, key="old")
    with BlobStore(tmp_path / "s", signing_key=KEY) as store:
        assert store.get_metadata("old")["signature_valid"] is False  # type: ignore[index]
        with pytest.raises(CacheIntegrityError, match="unsigned"):
            store.get("old")
        assert store.get("old", strict_verification=False) == 1


# ------------------------------------------- require_signatures vs pickles


@pytest.mark.parametrize("verify_on_read", [True, False])
def test_malicious_blob_is_never_unpickled(
    signed_root: tuple[Path, str], tmp_path: Path, verify_on_read: bool
) -> None:
    marker = tmp_path / "PWNED"
    evil = lz4.frame.compress(_evil_pickle(marker))
    with _open(signed_root, require_signatures=True, verify_on_read=verify_on_read) as store:
        store.put({"legit": "x" * 500}, key="k")
        record = store.metadata_backend.get("k")
        assert record is not None and record.handler == "pickle"
        # 1. swap the blob's bytes only
        store.blob_backend.put(record.blob_key, evil)
        for call in (
            lambda: store.get("k"),
            lambda: store.get("k", strict_verification=False),
            lambda: store.get_with_metadata("k", strict_verification=False),
        ):
            with pytest.raises(CacheIntegrityError):
                call()
        # 2. also make the recorded hash match the evil bytes (signature now stale)
        _tamper(store, "k", content_hash=hash_chunks([evil], "xxh3_128"), size=len(evil))
        with pytest.raises(CacheIntegrityError):
            store.get("k", strict_verification=False)
        # 3. plant a fresh unsigned entry pointing at evil bytes
        store.blob_backend.put("e" * 32, evil)
        planted = dataclasses.replace(
            record, key="planted", blob_key="e" * 32, signature=None,
            content_hash=hash_chunks([evil], "xxh3_128"), size=len(evil),
        )  # fmt: skip
        store.metadata_backend.put(planted)
        with pytest.raises(CacheIntegrityError):
            store.get("planted", strict_verification=False)
        # 4. a signature copied from another entry does not fit
        store.put({"other": 1}, key="good")
        good = store.metadata_backend.get("good")
        assert good is not None
        _tamper(store, "planted", signature=good.signature)
        with pytest.raises(CacheIntegrityError):
            store.get("planted")
        report = store.verify()  # auditing hashes never unpickles either
        assert set(report.bad_signature) == {"k", "planted"}
        assert store.get("good") == {"other": 1}
    assert not marker.exists()


def test_handler_swap_on_signed_bytes_is_refused(
    signed_root: tuple[Path, str], tmp_path: Path
) -> None:
    """Untrusted bytes stored as bytes must not be re-labelled as a pickle."""
    marker = tmp_path / "PWNED"
    payload = _evil_pickle(marker)
    with _open(signed_root, require_signatures=True, compression="none") as store:
        store.put(payload, key="upload")  # a user stores someone's file, as bytes
        assert store.get("upload") == payload
        _tamper(store, "upload", handler="pickle", data_type="dict")
        with pytest.raises(CacheIntegrityError):
            store.get("upload", strict_verification=False)
    assert not marker.exists()


def test_tampered_sqlite_row_behind_the_store(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    root = tmp_path / "s"
    with BlobStore(root, signing_key=KEY, require_signatures=True, compression="none") as store:
        store.put(_evil_pickle(marker), key="bytes")
        store.put({"x": 1}, key="obj")
    con = sqlite3.connect(root / "metadata.sqlite")
    try:
        with con:
            con.execute("UPDATE entries SET handler='pickle' WHERE key='bytes'")
            con.execute("UPDATE entries SET signature=NULL WHERE key='obj'")
    finally:
        con.close()
    with BlobStore(root, signing_key=KEY, require_signatures=True) as store:
        with pytest.raises(CacheIntegrityError):
            store.get("bytes", strict_verification=False)
        with pytest.raises(CacheIntegrityError):
            store.get("obj", strict_verification=False)
    assert not marker.exists()


def test_unsigned_store_still_checks_content(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    with BlobStore(tmp_path / "s") as store:
        store.put({"legit": 1}, key="k")
        record = store.metadata_backend.get("k")
        assert record is not None
        store.blob_backend.put(record.blob_key, lz4.frame.compress(_evil_pickle(marker)))
        with pytest.raises(CacheIntegrityError):
            store.get("k")
    assert not marker.exists()


def test_dill_refused_when_signatures_required(tmp_path: Path) -> None:
    from cacheness.storage import CacheSerializationError

    with BlobStore(tmp_path / "s", signing_key=KEY, require_signatures=True) as store:
        assert store.allow_dill is False
        with pytest.raises(CacheSerializationError):
            store.put(lambda x: x + 1, key="fn")
        assert store.list() == []


# ------------------------------------------------------- keys stay inside


_key_text = st.one_of(
    st.text(
        min_size=1,
        max_size=40,
        alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    ),
    st.sampled_from(["..", "../x", "../../etc/passwd", "/etc/passwd", "/", ".", "a/../../b",
                     "C:\\Windows\\x", "~", "$HOME", "%2e%2e%2f", "'; DROP TABLE entries; --",
                     "blobs/00/00/x", "metadata.sqlite", "tmp", " ", "\n"]),
    st.text(
        min_size=300,
        max_size=2000,
        alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    ),
    st.from_regex(r"(\.\./){1,5}[a-z]{1,8}", fullmatch=True),
)  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite", "json"])
def test_keys_never_escape_the_root(tmp_path: Path, backend: str) -> None:
    root = tmp_path / "inner" / "store"
    stored: set[str] = set()
    with BlobStore(root, backend=backend) as store:

        @settings(
            max_examples=60 if backend == "sqlite" else 30,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(key=_key_text)
        def put_one(key: str) -> None:
            store.put({"k": key}, key=key)
            stored.add(key)
            assert store.get(key) == {"k": key}
            assert store.exists(key)

        put_one()
        assert store.list() == sorted(stored)
        for key in stored:
            assert store.list(prefix=key)[0] == key or key in store.list(prefix=key)
    outside = [p for p in tmp_path.rglob("*") if root not in p.parents and p != root]
    assert sorted(outside) == [tmp_path / "inner"]
    allowed_top = {"blobs", "tmp", "metadata.sqlite", "metadata.sqlite-wal",
                   "metadata.sqlite-shm", "metadata.json", "metadata.json.lock"}  # fmt: skip
    assert {p.name for p in root.iterdir()} <= allowed_top
    for p in (root / "blobs").rglob("*"):
        assert set(p.name) <= set("0123456789abcdef"), p


def test_nul_key_is_refused_and_writes_nothing(file_store: BlobStore, blob_files: Any) -> None:
    with pytest.raises(CacheKeyError):
        file_store.put(1, key="a\x00/../../x")
    assert file_store.list() == [] and blob_files(file_store.root) == []


def test_sql_text_in_keys_and_metadata_is_data(file_store: BlobStore) -> None:
    nasty = "'; DROP TABLE entries; --"
    file_store.put(1, key=nasty, metadata={nasty: nasty})
    file_store.put(2, key="x' OR '1'='1")
    assert file_store.get(nasty) == 1
    assert file_store.list(prefix="'") == [nasty]
    assert file_store.list(metadata_filter={nasty: nasty}) == [nasty]
    assert file_store.get("x' OR '1'='2") is None
    assert file_store.delete("x' OR '1'='1")
    assert file_store.list() == [nasty]


# ----------------------------------------------------------- verify/repair


def test_verify_repair(tmp_path: Path, blob_files: Any) -> None:
    with BlobStore(tmp_path / "s", signing_key=KEY) as store:
        for k in ("good", "corrupt", "missing", "badsig"):
            store.put({"k": k, "pad": "x" * 300}, key=k)
        store.put({"k": "good", "pad": "x" * 300}, key="good-twin")  # shares good's blob

        def blob_of(k: str) -> str:
            r = store.metadata_backend.get(k)
            assert r is not None
            return r.blob_key

        corrupt = next(p for p in blob_files(store.root) if p.name == blob_of("corrupt"))
        corrupt.write_bytes(corrupt.read_bytes()[:-5] + b"XXXXX")
        store.blob_backend.delete(blob_of("missing"))
        _tamper(store, "badsig", metadata={"forged": True})
        store.blob_backend.put("f" * 32, b"orphan")

        report = store.verify()
        assert (report.corrupt, report.missing, report.bad_signature) == (
            ["corrupt"], ["missing"], ["badsig"],
        )  # fmt: skip
        assert report.orphaned == ["f" * 32] and not report.ok and report.checked == 5
        assert report.repaired == []

        fixed = store.verify(repair=True)
        assert sorted(fixed.repaired) == sorted(["corrupt", "missing", "badsig", "f" * 32])
        assert store.list() == ["good", "good-twin"]
        assert store.get("good") == {"k": "good", "pad": "x" * 300}
        after = store.verify()
        assert after.ok and after.checked == 2
        assert len(blob_files(store.root)) == 1


# ---------------------------------------------------------------- logging


def test_logs_never_show_keys_or_signatures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with BlobStore(tmp_path / "s", signing_key=KEY) as store:
        store.put({"a": 1}, key="k")
        store.put(b"x" * 100, key="b")
        signature = store.get_metadata("k")["signature"]  # type: ignore[index]
        store.get("k")
        _tamper(store, "b", metadata={"forged": 1})
        store.get("b", strict_verification=False)
        store.blob_backend.put("a" * 32, b"orphan")
        store.verify(repair=True)
        store.gc()
        store.delete("k")
        repr(store), repr(store._signer)
    with BlobStore(tmp_path / "s", signing_key=OTHER_KEY) as store:
        store.verify()
    text = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert caplog.records, "expected some log output"
    for secret in (KEY.hex(), OTHER_KEY.hex(), repr(KEY), signature, KEY.hex().upper()):
        assert secret not in text


def test_log_levels(tmp_path: Path, caplog: pytest.LogCaptureFixture, blob_files: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="cacheness")
    with BlobStore(tmp_path / "s") as store:
        store.put(b"v" * 1000, key="k")
        assert {r.levelno for r in caplog.records} <= {logging.DEBUG}
        caplog.clear()
        store.blob_backend.put("a" * 32, b"orphan")
        assert store.gc() == 6
        assert [r.levelno for r in caplog.records if r.levelno > logging.DEBUG] == [logging.INFO]
        caplog.clear()
        (blob,) = blob_files(store.root)
        blob.write_bytes(b"truncated")
        with pytest.raises(CacheIntegrityError):
            store.get("k")
        assert any(r.levelno == logging.ERROR for r in caplog.records)
        caplog.clear()
        store.verify(repair=True)
        assert max(r.levelno for r in caplog.records) == logging.ERROR


@pytest.mark.parametrize("field", sorted(VALID_SIGNED_FIELDS))
def test_every_default_signed_field_is_covered(tmp_path: Path, field: str) -> None:
    from datetime import timedelta

    with BlobStore(tmp_path / "s", signing_key=KEY) as store:
        store.put({"v": 1}, key="k", metadata={"m": 1})
        record = store.metadata_backend.get("k")
        assert record is not None
        changed: Any = {
            "key": "k",  # the row stays under "k" but claims another key below
            "blob_key": "f" * 32,
            "data_type": "list",
            "handler": "bytes",
            "codec": "zstd" if record.codec == "none" else "none",
            "size": record.size + 1,
            "content_hash": "xxh3_128:" + "0" * 32,
            "created_at": record.created_at + timedelta(microseconds=1),
            "info": {"forged": True},
            "metadata": {"m": 2},
        }[field]
        if field == "key":
            forged = dataclasses.replace(record, key="other")
            store.metadata_backend.put(forged)  # a valid signature copied onto another key
            assert store.get_metadata("other")["signature_valid"] is False  # type: ignore[index]
        else:
            _tamper(store, "k", **{field: changed})
            assert store.get_metadata("k")["signature_valid"] is False  # type: ignore[index]
            with pytest.raises(CacheIntegrityError):
                store.get("k")


def test_world_readable_key_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "k.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING), BlobStore(tmp_path / "s", signing_key=key_file):
        pass
    assert "chmod 600" in caplog.text
    assert KEY.hex() not in caplog.text
