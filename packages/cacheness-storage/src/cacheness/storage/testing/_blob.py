"""Contract tests every :class:`~cacheness.storage.abc.BlobBackend` passes."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from cacheness.storage.abc import BlobBackend
from cacheness.storage.errors import BlobNotFoundError, CacheStorageError

__all__ = ["BlobBackendTests"]


class BlobBackendTests:
    """pytest base class: subclass it and implement :meth:`make_backend`."""

    #: False for backends whose blobs are gone once the instance is closed.
    persistent: ClassVar[bool | None] = None

    def make_backend(self, tmp_path: Path) -> BlobBackend:
        raise NotImplementedError("subclasses return a fresh backend rooted under tmp_path")

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[BlobBackend]:
        b = self.make_backend(tmp_path)
        try:
            yield b
        finally:
            b.close()

    def _persistent(self, backend: BlobBackend) -> bool:
        return type(backend).persistent if self.persistent is None else self.persistent

    # ------------------------------------------------------------- basics

    def test_put_get_round_trip(self, backend: BlobBackend) -> None:
        backend.put("k1", b"hello")
        assert backend.get("k1") == b"hello"
        assert isinstance(backend.get("k1"), bytes)

    def test_put_accepts_bytearray_memoryview_and_chunks(self, backend: BlobBackend) -> None:
        backend.put("a", bytearray(b"ab"))
        backend.put("b", memoryview(b"xyz"))
        backend.put("c", [b"12", bytearray(b"34"), memoryview(b"56")])
        assert (backend.get("a"), backend.get("b"), backend.get("c")) == (b"ab", b"xyz", b"123456")

    def test_empty_blob(self, backend: BlobBackend) -> None:
        backend.put("empty", b"")
        assert backend.exists("empty")
        assert backend.get("empty") == b""
        assert backend.size("empty") == 0

    def test_binary_content_is_exact(self, backend: BlobBackend) -> None:
        data = bytes(range(256)) * 513 + os.urandom(4099)
        backend.put("bin", data)
        assert backend.get("bin") == data
        assert backend.size("bin") == len(data)

    def test_missing_blob_raises_blob_not_found(self, backend: BlobBackend) -> None:
        with pytest.raises(BlobNotFoundError) as info:
            backend.get("absent")
        assert isinstance(info.value, CacheStorageError)
        assert isinstance(info.value, KeyError)
        assert info.value.key == "absent"
        with pytest.raises(BlobNotFoundError):
            backend.open_read("absent")
        with pytest.raises(BlobNotFoundError):
            backend.size("absent")

    def test_exists_and_delete(self, backend: BlobBackend) -> None:
        assert not backend.exists("d")
        backend.put("d", b"x")
        assert backend.exists("d")
        assert backend.delete("d") is True
        assert not backend.exists("d")
        assert backend.delete("d") is False
        with pytest.raises(BlobNotFoundError):
            backend.get("d")

    def test_put_overwrites(self, backend: BlobBackend) -> None:
        backend.put("o", b"first version, longer")
        backend.put("o", b"second")
        assert backend.get("o") == b"second"
        assert list(backend.iter_keys("o")) == ["o"]

    def test_iter_keys_with_prefix(self, backend: BlobBackend) -> None:
        for k in ("ab1", "ab2", "ac3", "b.4", "b-5_x"):
            backend.put(k, k.encode())
        assert sorted(backend.iter_keys()) == ["ab1", "ab2", "ac3", "b-5_x", "b.4"]
        assert sorted(backend.iter_keys("ab")) == ["ab1", "ab2"]
        assert sorted(backend.iter_keys("zz")) == []

    def test_hash_like_keys(self, backend: BlobBackend) -> None:
        keys = [os.urandom(16).hex() for _ in range(20)]
        for k in keys:
            backend.put(k, k.encode())
        assert sorted(backend.iter_keys()) == sorted(keys)
        assert all(backend.get(k) == k.encode() for k in keys)

    # ---------------------------------------------------------- streaming

    def test_open_read_streams_in_chunks(self, backend: BlobBackend) -> None:
        data = os.urandom(3 * 1024 * 1024 + 17)
        backend.put("big", data)
        parts = []
        with backend.open_read("big") as f:
            while chunk := f.read(1 << 20):
                parts.append(chunk)
        assert b"".join(parts) == data

    def test_put_file_from_binary_file(self, backend: BlobBackend) -> None:
        data = os.urandom(2 * 1024 * 1024 + 5)
        backend.put_file("pf", io.BytesIO(data))
        assert backend.get("pf") == data

    def test_put_file_from_current_position(self, backend: BlobBackend) -> None:
        src = io.BytesIO(b"skip-me|keep-me")
        src.seek(8)
        backend.put_file("pos", src)
        assert backend.get("pos") == b"keep-me"

    def test_writer_commit_publishes_under_the_key(self, backend: BlobBackend) -> None:
        with backend.writer() as w:
            w.write(b"part1-")
            w.write(memoryview(b"part2"))
            assert not backend.exists("w1")
            w.commit("w1")
        assert backend.get("w1") == b"part1-part2"

    def test_writer_abort_leaves_nothing(self, backend: BlobBackend) -> None:
        before = sorted(backend.iter_keys())
        w = backend.writer()
        w.write(b"x" * 1000)
        w.abort()
        with backend.writer() as w2:  # exiting without commit aborts
            w2.write(b"y")
        assert sorted(backend.iter_keys()) == before

    def test_writer_abort_after_error_in_block(self, backend: BlobBackend) -> None:
        with pytest.raises(RuntimeError), backend.writer() as w:
            w.write(b"z")
            raise RuntimeError("boom")
        assert not backend.exists("never")
        assert list(backend.iter_keys()) == []

    # ------------------------------------------------- lifecycle, threads

    def test_persistent_backend_sees_earlier_writes(
        self, backend: BlobBackend, tmp_path: Path
    ) -> None:
        if not self._persistent(backend):
            pytest.skip("backend does not persist blobs beyond its instance")
        backend.put("p", b"persisted")
        backend.close()
        again = self.make_backend(tmp_path)
        try:
            assert again.get("p") == b"persisted"
            assert list(again.iter_keys()) == ["p"]
        finally:
            again.close()

    def test_close_is_idempotent(self, backend: BlobBackend) -> None:
        backend.put("c", b"1")
        backend.close()
        backend.close()

    def test_threads_writing_distinct_and_shared_keys(self, backend: BlobBackend) -> None:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(25):
                    backend.put(f"t{n}-{i}", f"{n}:{i}".encode() * 50)
                    backend.put("shared", b"S" * 1000)
                    assert backend.get(f"t{n}-{i}") == f"{n}:{i}".encode() * 50
                    assert backend.get("shared") == b"S" * 1000
            except BaseException as exc:  # noqa: BLE001 - reported by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(list(backend.iter_keys("t"))) == 8 * 25
