from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from cacheness.storage.abc import BlobBackend, Buffer, EntryRecord, MetadataBackend, chunks_of
from cacheness.storage.errors import BlobNotFoundError

__all__ = ["MemoryBlobBackend", "MemoryMetadataBackend", "matches_filter"]


def matches_filter(metadata: Mapping[str, Any], metadata_filter: Mapping[str, Any]) -> bool:
    """Equality on every filter item; ``1``, ``1.0`` and ``True`` are different values."""
    for name, want in metadata_filter.items():
        if name not in metadata:
            return False
        have = metadata[name]
        if type(have) is not type(want) or have != want:
            return False
    return True


class MemoryBlobBackend(BlobBackend):
    """Blobs in a dict: for tests and throwaway stores; gone with the process."""

    name: ClassVar[str] = "memory"
    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    persistent: ClassVar[bool] = False

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBlobBackend:
        return cls()

    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        parts = chunks_of(data)
        self._blobs[key] = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def get(self, key: str) -> bytes:
        try:
            return self._blobs[key]
        except KeyError:
            raise BlobNotFoundError(
                f"blob {key!r} is not stored", key=key, backend=self.name
            ) from None

    def exists(self, key: str) -> bool:
        return key in self._blobs

    def delete(self, key: str) -> bool:
        return self._blobs.pop(key, None) is not None

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        return iter([k for k in list(self._blobs) if k.startswith(prefix)])

    def size(self, key: str) -> int:
        return len(self.get(key))


class MemoryMetadataBackend(MetadataBackend):
    """Entries in a dict, guarded by a lock; gone with the process."""

    name: ClassVar[str] = "memory"
    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    supports_inline: ClassVar[bool] = True

    def __init__(self) -> None:
        self._entries: dict[str, EntryRecord] = {}
        self._refs: dict[str, int] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryMetadataBackend:
        return cls()

    def get(self, key: str) -> EntryRecord | None:
        record = self._entries.get(key)
        return None if record is None else copy.deepcopy(record)

    def put(self, record: EntryRecord) -> EntryRecord | None:
        with self._lock:
            old = self._entries.get(record.key)
            if old is not None:
                self._unref(old.blob_key)
            self._entries[record.key] = copy.deepcopy(record)
            self._refs[record.blob_key] = self._refs.get(record.blob_key, 0) + 1
            return old

    def delete(self, key: str) -> EntryRecord | None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._unref(old.blob_key)
            return old

    def _unref(self, blob_key: str) -> None:
        n = self._refs.get(blob_key, 0) - 1
        if n > 0:
            self._refs[blob_key] = n
        else:
            self._refs.pop(blob_key, None)

    def list_keys(
        self, prefix: str | None = None, metadata_filter: Mapping[str, Any] | None = None
    ) -> list[str]:
        with self._lock:
            records = list(self._entries.values())
        return sorted(
            r.key
            for r in records
            if (prefix is None or r.key.startswith(prefix))
            and (not metadata_filter or matches_filter(r.metadata, metadata_filter))
        )

    def count_refs(self, blob_key: str) -> int:
        return self._refs.get(blob_key, 0)

    def iter_records(self) -> Iterator[EntryRecord]:
        with self._lock:
            records = list(self._entries.values())
        return iter(copy.deepcopy(records))

    def write_lock(self) -> AbstractContextManager[Any]:
        return self._lock
