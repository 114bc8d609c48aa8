"""A BlobStore's upkeep: ``verify`` (integrity audit and its report, optional
repair) and ``gc`` (freeing unreferenced content and stale temp files)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cacheness.storage._hashing import HashingReader, hash_chunks, split_hash
from cacheness.storage._validation import _check_key
from cacheness.storage._writing import _release
from cacheness.storage.abc import EntryRecord
from cacheness.storage.errors import BlobNotFoundError

if TYPE_CHECKING:
    from cacheness.storage._store import BlobStore

__all__ = ["VerifyReport"]

logger = logging.getLogger(__name__)

# Temp files younger than this may belong to a put still in progress.
_TEMP_GRACE_S = 3600.0


@dataclass
class VerifyReport:
    """What :meth:`BlobStore.verify` found (and, with ``repair=True``, removed)."""

    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    bad_signature: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.orphaned or self.bad_signature)


def verify(store: BlobStore, key: str | None, repair: bool) -> VerifyReport:
    """:meth:`BlobStore.verify`."""
    store._check_open()
    report = VerifyReport()
    if key is not None:
        _check_key(key)
        record = store.metadata_backend.get(key)
        records = [] if record is None else [record]
    else:
        records = list(store.metadata_backend.iter_records())
    for record in records:
        report.checked += 1
        problem: list[str] | None = None
        if store._signer is not None and not store._signer.verify(record):
            problem = report.bad_signature
        elif record.inline is not None:
            algorithm = split_hash(record.content_hash)[0]
            if hash_chunks((record.inline,), algorithm) != record.content_hash:
                problem = report.corrupt
        else:
            try:
                with store.blob_backend.open_read(record.blob_key) as raw:
                    reader = HashingReader(raw, split_hash(record.content_hash)[0])
                    reader.drain()
                if reader.content_hash() != record.content_hash:
                    problem = report.corrupt
            except BlobNotFoundError:
                problem = report.missing
        if problem is not None:
            problem.append(record.key)
            if repair and _drop_entry(store, record):
                report.repaired.append(record.key)
    if key is None:
        referenced = store.metadata_backend.blob_keys()
        for blob_key in store.blob_backend.iter_keys():
            if blob_key not in referenced:
                report.orphaned.append(blob_key)
                if repair and _free_orphan(store, blob_key) is not None:
                    report.repaired.append(blob_key)
    if not report.ok:
        # Corrupt or missing content is data lost; the rest is reparable clutter.
        logger.log(
            logging.ERROR if report.corrupt or report.missing else logging.WARNING,
            "verify found %d corrupt, %d missing, %d orphaned, %d badly signed",
            len(report.corrupt),
            len(report.missing),
            len(report.orphaned),
            len(report.bad_signature),
        )
    return report


def _drop_entry(store: BlobStore, record: EntryRecord) -> bool:
    """Delete the entry ``record`` was read from, unless it was put again since;
    whether it was deleted."""
    with store.metadata_backend.write_lock():
        current = store.metadata_backend.get(record.key)
        if current is None or _identity(current) != _identity(record):
            return False  # replaced since it was checked: the new entry is not ours to drop
        store.metadata_backend.delete(record.key)
    logger.warning("verify(repair=True) removed entry %r", record.key)
    _release(store, record.blob_key)
    return True


def _identity(record: EntryRecord) -> tuple[Any, ...]:
    # Not the blob key alone: every value held in its row has blob_key "", and a
    # put of the same content again names the same blob.
    return (record.blob_key, record.content_hash, record.created_at, record.inline)


def _free_orphan(store: BlobStore, blob_key: str) -> int | None:
    with store.metadata_backend.write_lock():
        if store.metadata_backend.count_refs(blob_key):
            return None
        try:
            size = store.blob_backend.size(blob_key)
        except BlobNotFoundError:
            return None
        store.blob_backend.delete(blob_key)
        return size


def gc(store: BlobStore) -> int:
    """:meth:`BlobStore.gc`."""
    store._check_open()
    freed = 0
    referenced = store.metadata_backend.blob_keys()
    for blob_key in list(store.blob_backend.iter_keys()):
        if blob_key not in referenced:
            freed += _free_orphan(store, blob_key) or 0
    temp_files = getattr(store.blob_backend, "temp_files", None)
    if temp_files is not None:
        cutoff = time.time() - _TEMP_GRACE_S
        for path in temp_files():
            try:
                st = path.stat()
                if st.st_mtime < cutoff:
                    path.unlink()
                    freed += st.st_size
            except FileNotFoundError:
                pass
    if freed:
        logger.info("gc freed %d bytes", freed)
    return freed
