from __future__ import annotations

import base64
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from cacheness.storage.abc import EntryRecord, MetadataBackend
from cacheness.storage.backends._memory import matches_filter
from cacheness.storage.backends._rows import COLUMNS, record_to_row, row_to_record
from cacheness.storage.errors import CacheBackendError, CacheStorageError

__all__ = ["JsonMetadataBackend"]

_FORMAT = 1


class JsonMetadataBackend(MetadataBackend):
    """Entries in one JSON file, rewritten atomically (temp file + rename) on each change.

    Writers of several processes serialise on an ``fcntl`` lock of a sidecar
    ``.lock`` file; readers reload when the file's identity changed. Every
    change is on disk when the call returns, so ``close()`` writes nothing and
    a directory deleted before it is not an error. Suited to small stores:
    each write is O(entries).
    """

    name: ClassVar[str] = "json"
    schemes: ClassVar[tuple[str, ...]] = ("json",)
    supports_inline: ClassVar[bool] = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._entries: dict[str, EntryRecord] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> JsonMetadataBackend:
        return cls(url.split("://", 1)[1], **options)

    # ------------------------------------------------------------ file state

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self, force: bool = False) -> None:
        stamp = self._current_stamp()
        if stamp == self._stamp and not force:
            return
        if stamp is None:
            self._entries = {}
        else:
            try:
                with open(self.path, encoding="utf-8") as f:
                    doc = json.load(f)
                rows = doc["entries"]
                self._entries = {row[0]: _from_json_row(row) for row in rows}
            except FileNotFoundError:
                self._entries = {}
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise CacheBackendError(
                    f"metadata file {self.path} is not valid cacheness JSON ({exc}); "
                    "restore it from a backup or delete it to start empty",
                    backend=self.name,
                ) from exc
        self._stamp = stamp

    def _save(self) -> None:
        doc = {
            "format": _FORMAT,
            "columns": COLUMNS,
            "entries": [_to_json_row(r) for r in self._entries.values()],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError as exc:
            _unlink_quiet(tmp)
            raise CacheStorageError(
                f"could not write metadata file {self.path}: {exc.strerror}", backend=self.name
            ) from exc
        except BaseException:
            _unlink_quiet(tmp)
            raise
        self._stamp = self._current_stamp()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._depth = 1
                # Always re-read under the lock: (inode, mtime, size) can repeat
                # when two rewrites land in one clock tick and an inode is reused,
                # and a write based on a stale copy would lose another's commit.
                self._refresh(force=True)
                yield
            finally:
                self._depth = 0
                os.close(fd)

    def write_lock(self) -> Any:
        return self._locked()

    # --------------------------------------------------------------- queries

    def get(self, key: str) -> EntryRecord | None:
        with self._thread_lock:
            self._refresh()
            r = self._entries.get(key)
            return None if r is None else row_to_record(record_to_row(r))

    def put(self, record: EntryRecord) -> EntryRecord | None:
        with self._locked():
            old = self._entries.get(record.key)
            self._entries[record.key] = row_to_record(record_to_row(record))
            try:
                self._save()
            except BaseException:
                if old is None:
                    del self._entries[record.key]
                else:
                    self._entries[record.key] = old
                raise
            return old

    def delete(self, key: str) -> EntryRecord | None:
        with self._locked():
            old = self._entries.pop(key, None)
            if old is not None:
                try:
                    self._save()
                except BaseException:
                    self._entries[key] = old
                    raise
            return old

    def list_keys(
        self, prefix: str | None = None, metadata_filter: Mapping[str, Any] | None = None
    ) -> list[str]:
        with self._thread_lock:
            self._refresh()
            return sorted(
                k
                for k, r in self._entries.items()
                if (prefix is None or k.startswith(prefix))
                and (not metadata_filter or matches_filter(r.metadata, metadata_filter))
            )

    def count_refs(self, blob_key: str) -> int:
        with self._thread_lock:
            self._refresh()
            return sum(1 for r in self._entries.values() if r.blob_key == blob_key)

    def iter_records(self) -> Iterator[EntryRecord]:
        with self._thread_lock:
            self._refresh()
            return iter([row_to_record(record_to_row(r)) for r in self._entries.values()])


def _to_json_row(record: EntryRecord) -> list[Any]:
    row = list(record_to_row(record))
    if row[-1] is not None:  # inline bytes travel as base64 text
        row[-1] = base64.b64encode(row[-1]).decode("ascii")
    return row


def _from_json_row(row: list[Any]) -> EntryRecord:
    record = row_to_record(row)
    if record.inline is not None:
        record.inline = base64.b64decode(record.inline, validate=True)
    return record


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
