"""The cache index in one JSON file, for ``metadata_backend="json"``.

The whole index is read into a dict, and every write rewrites the file
(temporary file + rename, under an exclusive ``flock`` on a lock file), so
processes sharing the folder agree. Reads reload the file only when its
(size, mtime, inode) changed. Writes and evictions cost O(n) here: the JSON
backend is for small, human-readable caches; use SQLite for large ones.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cacheness.policy._base import (
    COUNTERS,
    POLICY_ORDER,
    ROW_FIELDS,
    CacheIndex,
    Generation,
    IndexRow,
    Limits,
    Pending,
    PutResult,
)
from cacheness.storage.errors import CacheBackendError

__all__ = ["JsonIndex"]

_FIELDS = ROW_FIELDS[1:]


def _empty() -> dict[str, Any]:
    return {
        "format": 1,
        "entries": {},
        "contents": {},
        "state": {"generation": 0, **dict.fromkeys(COUNTERS, 0)},
        "leases": {},
    }


def _to_row(key: str, d: dict[str, Any]) -> IndexRow:
    row = IndexRow(key=key, **{f: d[f] for f in _FIELDS})
    # Copies: callers hand these dicts to users, who must not reach the index's own.
    row.key_params = copy.deepcopy(row.key_params)
    row.metadata = copy.deepcopy(row.metadata)
    return row


class JsonIndex(CacheIndex):
    name = "json"

    def __init__(self, path: Path, generation: Generation, policy: str) -> None:
        super().__init__(generation)
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._tlock = threading.RLock()
        self._order = POLICY_ORDER[policy]
        self._data = _empty()
        self._stamp: tuple[int, int, int] | None = None
        self._closed = False
        with self._locked():
            pass

    # ------------------------------------------------------------ file I/O

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def _refresh(self) -> None:
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        if stamp is None:
            self._data = _empty()
        else:
            try:
                with open(self.path, encoding="utf-8") as f:
                    self._data = json.load(f)
            except (OSError, ValueError) as exc:
                raise CacheBackendError(
                    f"cannot read the cache index {self.path}: {exc}; delete it to start over",
                    backend=self.name,
                ) from exc
        self._stamp = stamp

    def _save(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".cache_index-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._data, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._stamp = self._current_stamp()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Exclusive access across threads and processes; saves when the body succeeds."""
        with self._tlock:
            if self._closed:
                raise CacheBackendError("the cache index is closed", backend=self.name)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise CacheBackendError(
                    f"cannot lock the cache index {self.path}: {exc}", backend=self.name
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._refresh()
                self._dirty = False
                yield self._data
                if self._dirty:
                    self._save()
                # Saved, and still under the lock: writers publish in order.
                self.publish()
            except BaseException:
                self._stamp = None  # reload on next use: the in-memory copy may be half-changed
                self._forget_reached()
                raise
            finally:
                self._dirty = False
                os.close(fd)

    _dirty = False

    def _read(self) -> dict[str, Any]:
        with self._tlock:
            if self._closed:
                raise CacheBackendError("the cache index is closed", backend=self.name)
            self._refresh()
            return self._data

    def _bump(self, data: dict[str, Any], entries: int = 0, size: int = 0) -> None:
        st = data["state"]
        st["generation"] += 1
        st["entries"] += entries
        st["size_bytes"] += size
        self._reached(st["generation"])
        self._dirty = True

    # -------------------------------------------------------------- reads

    # Reads hold the thread lock throughout: a writer thread mutates the same dicts.

    def lookup(self, key: str) -> tuple[str, float | None] | None:
        with self._tlock:
            d = self._read()["entries"].get(key)
            return None if d is None else (d["store_key"], d["expires"])

    def row(self, key: str) -> IndexRow | None:
        with self._tlock:
            d = self._read()["entries"].get(key)
            return None if d is None else _to_row(key, d)

    def rows(self, prefix: str | None = None) -> list[IndexRow]:
        with self._tlock:
            entries = self._read()["entries"]
            return [
                _to_row(k, entries[k])
                for k in sorted(entries)
                if not prefix or k.startswith(prefix)
            ]

    def counters(self) -> dict[str, int]:
        with self._tlock:
            st = self._read()["state"]
            return {c: int(st[c]) for c in COUNTERS}

    def store_keys(self) -> set[str]:
        with self._tlock:
            return {d["store_key"] for d in self._read()["entries"].values()}

    # ------------------------------------------------------------- writes

    @staticmethod
    def _add_content(data: dict[str, Any], content_hash: str, size: int) -> int:
        c = data["contents"].get(content_hash)
        if c is not None:
            c[1] += 1
            return 0
        data["contents"][content_hash] = [size, 1]
        return size

    @staticmethod
    def _drop_content(data: dict[str, Any], content_hash: str) -> int:
        c = data["contents"].get(content_hash)
        if c is None:
            return 0
        c[1] -= 1
        if c[1] > 0:
            return 0
        del data["contents"][content_hash]
        return int(c[0])

    def _flush(self, data: dict[str, Any], pending: Pending) -> None:
        access, counts = pending
        for key, (hits, last) in access.items():
            d = data["entries"].get(key)
            if d is not None:
                d["hits"] += int(hits)
                d["accessed"] = max(d["accessed"], last)
                self._dirty = True
        access.clear()
        for name in ("hits", "misses"):
            if counts.get(name):
                data["state"][name] += counts[name]
                self._dirty = True
        counts.clear()

    def flush(self, pending: Pending) -> None:
        if not pending[0] and not any(pending[1].values()):
            return
        with self._locked() as data:
            self._flush(data, pending)

    def put(self, row: IndexRow, limits: Limits, take_pending: Callable[[], Pending]) -> PutResult:
        with self._locked() as data:
            self._flush(data, take_pending())
            entries = data["entries"]
            old = entries.get(row.key)
            d_entries, d_size = 1, 0
            if old is not None:
                d_entries = 0
                d_size -= self._drop_content(data, old["content_hash"])
            d_size += self._add_content(data, row.content_hash, row.size)
            entries[row.key] = {f: getattr(row, f) for f in _FIELDS}
            self._bump(data, d_entries, d_size)
            result = PutResult(replaced=None if old is None else old["store_key"], victims=[])
            self._evict(data, row.key, limits, result)
        return result

    def _evict(self, data: dict[str, Any], keep: str, limits: Limits, result: PutResult) -> None:
        st = data["state"]
        over_n = 0 if limits.max_entries is None else st["entries"] - limits.max_entries
        over_b = 0 if limits.max_bytes is None else st["size_bytes"] - limits.max_bytes
        if over_n <= 0 and over_b <= 0:
            return
        entries = data["entries"]
        order = self._order
        candidates = sorted(
            (k for k in entries if k != keep),
            key=lambda k: tuple(k if c == "key" else entries[k][c] for c in order),
        )
        evicted = freed_total = 0
        for key in candidates:
            if over_n <= 0 and over_b <= 0:
                break
            d = entries.pop(key)
            freed = self._drop_content(data, d["content_hash"])
            over_n -= 1
            over_b -= freed
            evicted += 1
            freed_total += freed
            result.victims.append(d["store_key"])
        result.oversized = over_b > 0
        st["evictions"] += evicted
        self._bump(data, -evicted, -freed_total)

    def replace_value(
        self,
        key: str,
        store_key: str,
        content_hash: str,
        size: int,
        now: float,
        limits: Limits,
        take_pending: Callable[[], Pending],
    ) -> PutResult | None:
        with self._locked() as data:
            d = data["entries"].get(key)
            if d is None:
                return None
            self._flush(data, take_pending())
            old = d["store_key"]
            d_size = self._add_content(data, content_hash, size)
            d_size -= self._drop_content(data, d["content_hash"])
            d.update(store_key=store_key, content_hash=content_hash, size=size, accessed=now)
            self._bump(data, 0, d_size)
            result = PutResult(replaced=str(old), victims=[])
            self._evict(data, key, limits, result)
        return result

    def remove(
        self, key: str, store_key: str | None = None, counter: str | None = None
    ) -> str | None:
        with self._locked() as data:
            d = data["entries"].get(key)
            if d is None or (store_key is not None and d["store_key"] != store_key):
                return None
            del data["entries"][key]
            freed = self._drop_content(data, d["content_hash"])
            if counter is not None:
                data["state"][counter] += 1
            self._bump(data, -1, -freed)
            return str(d["store_key"])

    def touch(self, key: str, expires: float | None, now: float) -> bool:
        with self._locked() as data:
            d = data["entries"].get(key)
            if d is None:
                return False
            d["expires"] = expires
            d["accessed"] = max(d["accessed"], now)
            self._bump(data)
            return True

    def sweep_expired(self, now: float) -> list[str]:
        with self._locked() as data:
            entries = data["entries"]
            gone = [
                k for k, d in entries.items() if d["expires"] is not None and d["expires"] <= now
            ]
            freed = 0
            out = []
            for k in gone:
                d = entries.pop(k)
                freed += self._drop_content(data, d["content_hash"])
                out.append(d["store_key"])
            if gone:
                data["state"]["expired"] += len(gone)
                self._bump(data, -len(gone), -freed)
            return out

    def clear(self, prefix: str | None = None) -> list[str]:
        with self._locked() as data:
            entries = data["entries"]
            gone = [k for k in entries if not prefix or k.startswith(prefix)]
            freed = 0
            out = []
            for k in gone:
                d = entries.pop(k)
                freed += self._drop_content(data, d["content_hash"])
                out.append(d["store_key"])
            self._bump(data, -len(gone), -freed)
            return out

    def acquire_lease(self, name: str, owner: str, ttl: float, now: float) -> bool:
        with self._locked() as data:
            held = data["leases"].get(name)
            if held is not None and held[0] != owner and held[1] > now:
                return False
            data["leases"][name] = [owner, now + ttl]
            self._dirty = True
            return True

    def release_lease(self, name: str, owner: str) -> bool:
        with self._locked() as data:
            held = data["leases"].get(name)
            if held is None or held[0] != owner:
                return False
            del data["leases"][name]
            self._dirty = True
            return True

    def close(self) -> None:
        with self._tlock:
            if self._closed:
                return
            self._closed = True
        super().close()
