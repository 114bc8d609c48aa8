"""The built-in backends pass the public conformance suites."""

from __future__ import annotations

from pathlib import Path

import pytest
from cacheness.storage.abc import BlobBackend, MetadataBackend
from cacheness.storage.backends import (
    FilesystemBlobBackend,
    JsonMetadataBackend,
    MemoryBlobBackend,
    MemoryMetadataBackend,
    SqlAlchemyMetadataBackend,
    SqliteMetadataBackend,
)
from cacheness.storage.testing import BlobBackendTests, MetadataBackendTests


class TestFilesystemBlobBackend(BlobBackendTests):
    def make_backend(self, tmp_path: Path) -> BlobBackend:
        return FilesystemBlobBackend(tmp_path / "store")

    def test_blobs_are_sharded_and_no_temp_files_remain(self, tmp_path: Path) -> None:
        backend = FilesystemBlobBackend(tmp_path / "store")
        key = "0123456789abcdef"
        backend.put(key, b"x")
        backend.put_file("fedcba", __import__("io").BytesIO(b"y"))
        assert (tmp_path / "store/blobs/01/23" / key).read_bytes() == b"x"
        assert (tmp_path / "store/blobs/fe/dc/fedcba").read_bytes() == b"y"
        assert backend.temp_files() == []

    def test_stray_files_are_not_blobs(self, tmp_path: Path) -> None:
        backend = FilesystemBlobBackend(tmp_path / "store")
        backend.put("abcd", b"x")
        (tmp_path / "store/blobs/ab/cd/Not Ours.txt").write_bytes(b"?")
        assert list(backend.iter_keys()) == ["abcd"]

    @pytest.mark.parametrize("bad", ["", "..", ".", "../x", "a/b", "A", "x\x00"])
    def test_unsafe_blob_names_are_refused(self, tmp_path: Path, bad: str) -> None:
        from cacheness.storage.errors import CacheKeyError

        backend = FilesystemBlobBackend(tmp_path / "store")
        with pytest.raises(CacheKeyError):
            backend.put(bad, b"x")
        assert not (tmp_path / "x").exists()


class TestMemoryBlobBackend(BlobBackendTests):
    def make_backend(self, tmp_path: Path) -> BlobBackend:
        return MemoryBlobBackend()


class TestMemoryMetadataBackend(MetadataBackendTests):
    persistent = False

    def make_backend(self, tmp_path: Path) -> MetadataBackend:
        return MemoryMetadataBackend()


class TestJsonMetadataBackend(MetadataBackendTests):
    def make_backend(self, tmp_path: Path) -> MetadataBackend:
        return JsonMetadataBackend(tmp_path / "meta" / "metadata.json")


class TestSqliteMetadataBackend(MetadataBackendTests):
    def make_backend(self, tmp_path: Path) -> MetadataBackend:
        return SqliteMetadataBackend(tmp_path / "metadata.sqlite")


class TestSqlAlchemyOnSqlite(MetadataBackendTests):
    def make_backend(self, tmp_path: Path) -> MetadataBackend:
        return SqlAlchemyMetadataBackend(f"sqlite:///{tmp_path / 'sa.sqlite'}")


@pytest.mark.integration
class TestSqlAlchemyOnPostgres(MetadataBackendTests):
    @pytest.fixture
    def backend(self, postgres_url: str) -> object:
        b = SqlAlchemyMetadataBackend(postgres_url)
        self._url = postgres_url
        yield b
        b.close()

    def make_backend(self, tmp_path: Path) -> MetadataBackend:
        return SqlAlchemyMetadataBackend(self._url)
