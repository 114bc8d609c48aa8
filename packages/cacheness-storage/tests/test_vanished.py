"""A store whose SQLite file is deleted (``rm -rf`` of its folder) or replaced while open.

Writes must not go on into the unlinked file, to vanish when it closes: the next
write transaction notices, makes the file again (or follows the new one) and
the store goes on from there, empty of what went with the old file.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cacheness.storage import BlobStore
from cacheness.storage.backends import _sqlite


@pytest.fixture(autouse=True)
def check_every_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check runs at most once a second; here, on every write transaction.
    monkeypatch.setattr(_sqlite, "_FILE_CHECK_S", 0.0)


def test_deleted_folder_is_made_again_and_later_writes_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "s"
    big = os.urandom(300_000)  # a blob file, not inline
    with BlobStore(root) as store:
        store.put({"a": 1}, key="old")
        store.put(big, key="old-file")
        shutil.rmtree(root)
        with caplog.at_level(logging.WARNING, logger="cacheness.storage"):
            store.put({"b": 2}, key="new")
        assert "was deleted while open" in caplog.text
        assert store.list() == ["new"]
        assert store.get("old") is None
        store.put(big, key="new-file")
    with BlobStore(root) as again:
        assert again.list() == ["new", "new-file"]
        assert again.get("new") == {"b": 2}
        assert again.get("new-file") == big
        assert again.verify().ok


def test_a_file_replaced_by_another_store_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with BlobStore(root) as first:
        first.put(1, key="first-old")
        shutil.rmtree(root)
        with BlobStore(root) as second:  # another process starts afresh there
            second.put(2, key="second")
            first.put(3, key="first-new")  # first notices and writes to that file
            assert first.get("second") == 2
            assert second.list() == ["first-new", "second"]


def test_other_threads_move_to_the_new_file(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with BlobStore(root) as store, ThreadPoolExecutor(1) as worker:
        store.put(1, key="x")
        assert worker.submit(store.get, "x").result() == 1  # the worker has a connection
        shutil.rmtree(root)
        store.put(2, key="y")  # this thread notices
        assert worker.submit(store.get, "x").result() is None  # not the unlinked file's
        assert worker.submit(store.get, "y").result() == 2
        worker.submit(store.put, 3, key="z").result()
    with BlobStore(root) as again:
        assert again.list() == ["y", "z"]


def test_an_unchanged_file_keeps_its_connection(tmp_path: Path) -> None:
    with BlobStore(tmp_path / "s") as store:
        store.put(1, key="a")
        backend = store.metadata_backend
        assert isinstance(backend, _sqlite.SqliteMetadataBackend)
        conn = backend._conn()
        store.put(2, key="b")
        assert backend._conn() is conn and store.list() == ["a", "b"]


def test_a_store_that_only_reads_follows_the_folder_made_again(tmp_path: Path) -> None:
    """A reader that never writes still notices, within the check interval, that the
    folder it reads was deleted and made again, and reads the new file's entries."""
    root = tmp_path / "s"
    with BlobStore(root) as writer, BlobStore(root) as reader:
        writer.put("o", key="old")
        assert reader.get("old") == "o"
        shutil.rmtree(root)
        writer.put("n", key="new")  # the writer makes the folder and file again
        assert reader.get("new") == "n"
        assert reader.get("old") is None
        assert reader.exists("new")
