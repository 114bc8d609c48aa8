"""Contract tests every :class:`~cacheness.storage.abc.MetadataBackend` passes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cacheness.storage.abc import EntryRecord, MetadataBackend

__all__ = ["MetadataBackendTests", "make_record"]

#: Keys a backend must store as given: quotes, SQL, LIKE wildcards, paths, unicode.
AWKWARD_KEYS = (
    "'; DROP TABLE entries; --",
    'x" OR "1"="1',
    "100%_done",
    "a\\b",
    "../../etc/passwd",
    "/abs/path",
    "C:\\\\windows",
    "tab\there\nnewline",
    "ключ-🔑-鍵",
    "e\u0301",  # combining accent: never normalised
    "é",
    "A",
    "a",
    "k" * 3000,
)


def make_record(key: str, blob_key: str = "b0", **changes: Any) -> EntryRecord:
    """A complete :class:`EntryRecord` for tests; ``changes`` override fields."""
    fields: dict[str, Any] = {
        "key": key,
        "blob_key": blob_key,
        "data_type": "dict",
        "handler": "pickle",
        "codec": "lz4",
        "size": 123,
        "content_hash": "xxh3_128:" + "0" * 32,
        "created_at": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        "info": {"shape": [2, 3], "dtype": "<f8", "nested": {"k": None}},
        "metadata": {"owner": "ana", "n": 1, "ratio": 0.5, "ok": True, "tags": ["x", "y"]},
        "signature": None,
    }
    fields.update(changes)
    return EntryRecord(**fields)


class MetadataBackendTests:
    """pytest base class: subclass it and implement :meth:`make_backend`."""

    #: False for backends that forget everything when the instance is closed.
    persistent: ClassVar[bool] = True

    def make_backend(self, tmp_path: Path) -> MetadataBackend:
        raise NotImplementedError("subclasses return a fresh backend rooted under tmp_path")

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[MetadataBackend]:
        b = self.make_backend(tmp_path)
        try:
            yield b
        finally:
            b.close()

    # ------------------------------------------------------------- records

    def test_put_get_round_trip_every_field(self, backend: MetadataBackend) -> None:
        rec = make_record("k", signature="ab" * 32)
        assert backend.put(rec) is None
        got = backend.get("k")
        assert got == rec
        assert got is not None and got.created_at.tzinfo is not None
        assert got.created_at.utcoffset() == UTC.utcoffset(None)

    def test_get_absent_is_none(self, backend: MetadataBackend) -> None:
        assert backend.get("nope") is None

    def test_returned_records_are_copies(self, backend: MetadataBackend) -> None:
        backend.put(make_record("k"))
        got = backend.get("k")
        assert got is not None
        got.metadata["owner"] = "mallory"
        got.info["shape"].append(9)
        again = backend.get("k")
        assert again is not None
        assert again.metadata["owner"] == "ana" and again.info["shape"] == [2, 3]

    def test_put_replaces_and_returns_old(self, backend: MetadataBackend) -> None:
        first = make_record("k", blob_key="b1")
        second = make_record("k", blob_key="b2", size=9, metadata={})
        assert backend.put(first) is None
        assert backend.put(second) == first
        assert backend.get("k") == second
        assert backend.list_keys() == ["k"]

    def test_delete_returns_removed_record(self, backend: MetadataBackend) -> None:
        rec = make_record("k")
        backend.put(rec)
        assert backend.delete("k") == rec
        assert backend.get("k") is None
        assert backend.delete("k") is None
        assert backend.list_keys() == []

    def test_awkward_keys_are_stored_exactly(self, backend: MetadataBackend) -> None:
        for i, key in enumerate(AWKWARD_KEYS):
            backend.put(make_record(key, blob_key=f"b{i}"))
        assert backend.list_keys() == sorted(AWKWARD_KEYS)
        for i, key in enumerate(AWKWARD_KEYS):
            got = backend.get(key)
            assert got is not None and got.key == key and got.blob_key == f"b{i}"
        # Lookalikes are different keys.
        assert backend.get("'; DROP TABLE entries") is None
        assert backend.get("e") is None

    def test_awkward_user_metadata_round_trips(self, backend: MetadataBackend) -> None:
        meta = {
            "q": 'it\'s "quoted"',
            "u": "ü🔑",
            "empty": {},
            "deep": {"a": [1, [2, {"b": None}]]},
        }
        backend.put(make_record("k", metadata=meta))
        got = backend.get("k")
        assert got is not None and got.metadata == meta

    # ---------------------------------------------------------------- lists

    def test_list_keys_sorted_by_code_point(self, backend: MetadataBackend) -> None:
        keys = ["b", "B", "a", "A", "a-b", "ab", "a.c", "ä", "Z", "_", "~", "中"]
        for k in keys:
            backend.put(make_record(k))
        assert backend.list_keys() == sorted(keys)

    def test_list_keys_prefix_is_exact(self, backend: MetadataBackend) -> None:
        keys = ["a", "a-b", "a-c", "a.b", "ab", "A-b", "b", "100%", "100_", "1000", "ä-1", "ä-2"]
        for k in keys:
            backend.put(make_record(k))
        for prefix in ("a", "a-", "A", "100%", "100_", "ä", "zz", "a-b"):
            expect = sorted(k for k in keys if k.startswith(prefix))
            assert backend.list_keys(prefix=prefix) == expect, prefix
        assert backend.list_keys(prefix="") == sorted(keys)

    def test_metadata_filter_is_typed_equality(self, backend: MetadataBackend) -> None:
        backend.put(make_record("int", metadata={"v": 1, "team": "x"}))
        backend.put(make_record("float", metadata={"v": 1.0, "team": "x"}))
        backend.put(make_record("bool", metadata={"v": True, "team": "y"}))
        backend.put(make_record("str", metadata={"v": "1", "team": "y"}))
        backend.put(make_record("none", metadata={"v": None}))
        backend.put(make_record("list", metadata={"v": [1, 2]}))
        backend.put(make_record("bare", metadata={}))
        backend.put(make_record("huge", metadata={"v": 2**70}))
        assert backend.list_keys(metadata_filter={"v": 2**70}) == ["huge"]
        assert backend.list_keys(metadata_filter={"v": 1}) == ["int"]
        assert backend.list_keys(metadata_filter={"v": 1.0}) == ["float"]
        assert backend.list_keys(metadata_filter={"v": True}) == ["bool"]
        assert backend.list_keys(metadata_filter={"v": "1"}) == ["str"]
        assert backend.list_keys(metadata_filter={"v": None}) == ["none"]
        assert backend.list_keys(metadata_filter={"v": [1, 2]}) == ["list"]
        assert backend.list_keys(metadata_filter={"team": "y"}) == ["bool", "str"]
        assert backend.list_keys(metadata_filter={"team": "x", "v": 1.0}) == ["float"]
        assert backend.list_keys(metadata_filter={"missing": 1}) == []
        assert backend.list_keys(prefix="s", metadata_filter={"team": "y"}) == ["str"]

    def test_metadata_filter_with_awkward_field_names(self, backend: MetadataBackend) -> None:
        meta = {'we"ird': 1, "a.b": 2, "$": 3, "'; --": 4}
        backend.put(make_record("k", metadata=meta))
        backend.put(make_record("other", metadata={}))
        for name, value in meta.items():
            assert backend.list_keys(metadata_filter={name: value}) == ["k"], name

    # ---------------------------------------------------------- references

    def test_count_refs_and_blob_keys(self, backend: MetadataBackend) -> None:
        backend.put(make_record("a", blob_key="shared"))
        backend.put(make_record("b", blob_key="shared"))
        backend.put(make_record("c", blob_key="own"))
        assert backend.count_refs("shared") == 2
        assert backend.count_refs("own") == 1
        assert backend.count_refs("nothing") == 0
        assert backend.blob_keys() == {"shared", "own"}
        backend.put(make_record("a", blob_key="own"))  # repoint a
        assert (backend.count_refs("shared"), backend.count_refs("own")) == (1, 2)
        backend.delete("b")
        assert backend.count_refs("shared") == 0
        assert backend.blob_keys() == {"own"}

    def test_iter_records(self, backend: MetadataBackend) -> None:
        recs = [make_record(f"k{i}", blob_key=f"b{i}", size=i) for i in range(5)]
        for r in recs:
            backend.put(r)
        assert sorted(backend.iter_records(), key=lambda r: r.key) == recs

    def test_update_metadata_replaces_user_metadata(self, backend: MetadataBackend) -> None:
        backend.put(make_record("k"))
        new = backend.update_metadata("k", {"only": "this"})
        assert new is not None and new.metadata == {"only": "this"}
        got = backend.get("k")
        assert got is not None and got.metadata == {"only": "this"} and got.blob_key == "b0"
        assert backend.update_metadata("absent", {"x": 1}) is None

    # --------------------------------------------------------------- locking

    def test_write_lock_allows_reads_and_writes_inside(self, backend: MetadataBackend) -> None:
        with backend.write_lock():
            backend.put(make_record("k"))
            assert backend.get("k") is not None
            assert backend.count_refs("b0") == 1
            with backend.write_lock():  # re-entrant in one thread
                backend.delete("k")
        assert backend.get("k") is None

    def test_write_lock_rolls_back_or_keeps_committed_state_on_error(
        self, backend: MetadataBackend
    ) -> None:
        backend.put(make_record("keep"))
        with pytest.raises(RuntimeError), backend.write_lock():
            raise RuntimeError("boom")
        assert backend.list_keys() == ["keep"]
        backend.put(make_record("after"))  # the backend is still usable
        assert backend.list_keys() == ["after", "keep"]

    def test_write_lock_serialises_threads(self, backend: MetadataBackend) -> None:
        backend.put(make_record("counter", metadata={"n": 0}))
        errors: list[BaseException] = []

        def bump() -> None:
            try:
                for _ in range(15):
                    with backend.write_lock():
                        rec = backend.get("counter")
                        assert rec is not None
                        rec.metadata = {"n": rec.metadata["n"] + 1}
                        backend.put(rec)
            except BaseException as exc:  # noqa: BLE001 - reported by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=bump) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        rec = backend.get("counter")
        assert rec is not None and rec.metadata == {"n": 8 * 15}

    # ------------------------------------------------------------- lifecycle

    def test_persistent_backend_sees_earlier_writes(
        self, backend: MetadataBackend, tmp_path: Path
    ) -> None:
        if not self.persistent:
            pytest.skip("backend does not persist beyond its instance")
        rec = make_record("p", signature="cd" * 32)
        backend.put(rec)
        backend.close()
        again = self.make_backend(tmp_path)
        try:
            assert again.get("p") == rec
            assert again.list_keys() == ["p"]
        finally:
            again.close()

    def test_close_is_idempotent(self, backend: MetadataBackend) -> None:
        backend.put(make_record("k"))
        backend.close()
        backend.close()
