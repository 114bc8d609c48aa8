"""Keys of paths: a file by its bytes, a directory by its files' paths and bytes
(hashed in parallel), with a stat memo so an unchanged file is not read again."""

from __future__ import annotations

import os
import pathlib
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import xxhash

from cacheness.keys._wire import _Q, _blob, _enc_str, _Unkeyable

_FILE_CHUNK = 8 * 1024 * 1024
_file_memo: dict[tuple[Any, ...], bytes] = {}
_file_memo_lock = threading.Lock()
_FILE_MEMO_MAX = 100_000


def _file_digest(path: str, st: os.stat_result) -> bytes:
    """Digest of a file's bytes; unchanged files (same size, times, inode) are not re-read."""
    stamp = (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    with _file_memo_lock:
        hit = _file_memo.get(stamp)
    if hit is not None:
        return hit
    if not stat.S_ISREG(st.st_mode):
        # A socket, FIFO or device has no content to key by (opening a FIFO blocks).
        raise _Unkeyable(f"{path!r} is not a regular file, so it has no content to key by")
    h = xxhash.xxh3_128()
    try:
        with open(path, "rb") as f:
            buf = bytearray(min(_FILE_CHUNK, max(st.st_size, 1)))
            view = memoryview(buf)
            while n := f.readinto(buf):
                h.update(view[:n])
    except OSError as exc:
        raise _Unkeyable(f"file {path!r} cannot be read ({exc.strerror})") from None
    digest = h.digest()
    with _file_memo_lock:
        if len(_file_memo) >= _FILE_MEMO_MAX:
            _file_memo.clear()
        _file_memo[stamp] = digest
    return digest


def _path(p: pathlib.PurePath) -> bytes:
    path = os.path.abspath(p)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _Unkeyable(
            f"path {str(p)!r} cannot be read ({exc.strerror}); Path parameters are keyed by "
            "content, pass str(path) to key by name instead"
        ) from None
    if not os.path.isdir(path):
        return _blob(b"p", _file_digest(path, st))
    files: list[tuple[str, str, os.stat_result]] = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            try:
                files.append((rel, full, os.stat(full)))
            except OSError as exc:
                raise _Unkeyable(f"file {full!r} cannot be read ({exc.strerror})") from None
    files.sort()

    def one(item: tuple[str, str, os.stat_result]) -> bytes:
        return _enc_str(item[0]) + _blob(b"p", _file_digest(item[1], item[2]))

    if len(files) > 1:
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
            parts = list(pool.map(one, files))
    else:
        parts = [one(f) for f in files]
    return b"e" + _Q.pack(len(parts)) + b"".join(parts)
