from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, ClassVar
from urllib.parse import unquote, urlparse

from cacheness.storage.abc import BlobBackend, BlobWriter, Buffer, chunks_of
from cacheness.storage.errors import BlobNotFoundError, CacheKeyError, CacheStorageError

__all__ = ["FilesystemBlobBackend"]

_SAFE = frozenset("0123456789abcdefghijklmnopqrstuvwxyz._-")
_COPY_CHUNK = 8 * 1024 * 1024
_O_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # no newline translation on Windows
_O_CREATE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
)


def _storage_error(exc: OSError, action: str, key: str | None, root: Path) -> CacheStorageError:
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full; free space or point the store at a larger volume"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"check that {root} is writable by this process"
    else:
        hint = f"check that {root} exists and is reachable"
    return CacheStorageError(
        f"could not {action} blob {key!r}: {exc.strerror}; {hint}", key=key, backend="filesystem"
    )


class _FileWriter(BlobWriter):
    def __init__(self, backend: FilesystemBlobBackend) -> None:
        self._backend = backend
        fd, name = backend._mkstemp()
        self._path: str | None = name
        # The raw descriptor, no buffered file: callers write large pieces, and
        # closing a buffered file in abort() would flush (and fail) once more.
        self._fd: int | None = fd

    def write(self, data: Buffer) -> None:
        assert self._fd is not None, "writer already finished"
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self.abort()
            raise _storage_error(exc, "write", None, self._backend.root) from exc

    def commit(self, key: str) -> None:
        assert self._fd is not None and self._path is not None, "writer already finished"
        try:
            fd, self._fd = self._fd, None
            os.close(fd)
            self._backend._publish(self._path, key)
            self._path = None
        except OSError as exc:
            raise _storage_error(exc, "write", key, self._backend.root) from exc
        finally:
            self.abort()

    def abort(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None


class FilesystemBlobBackend(BlobBackend):
    """Blobs as files under ``root/blobs/ab/cd/<key>``.

    Writes go to ``root/tmp`` and are renamed into place with ``os.replace``,
    so a reader (or a crash) never sees a partial blob under a real name.
    """

    name: ClassVar[str] = "file"
    schemes: ClassVar[tuple[str, ...]] = ("file",)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        # String paths: pathlib's joins cost several microseconds on the small-get path.
        self._blobs_s = str(self._blobs) + os.sep
        self._tmp_s = str(self._tmp) + os.sep

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FilesystemBlobBackend:
        parsed = urlparse(url)
        return cls(unquote(parsed.netloc + parsed.path), **options)

    def path_for(self, key: str) -> Path:
        return Path(self._path(key))

    def _path(self, key: str) -> str:
        # Blob keys come from the store (hashes, uuids); the check keeps a
        # third-party caller from naming a file outside the blob folder.
        if not key or not _SAFE.issuperset(key) or key in (".", ".."):
            raise CacheKeyError(
                f"blob key {key!r} is not a valid blob name", key=key, backend=self.name
            )
        return f"{self._blobs_s}{key[:2]}{os.sep}{key[2:4]}{os.sep}{key}"

    def _mkstemp(self) -> tuple[int, str]:
        """A new, exclusive temporary file under ``root/tmp`` (what tempfile.mkstemp
        does, without its per-call overhead on the small-put path)."""
        for _attempt in range(100):
            name = f"{self._tmp_s}w-{os.urandom(8).hex()}"
            try:
                return os.open(name, _O_CREATE, 0o600), name
            except FileExistsError:
                continue
            except FileNotFoundError:
                # First write, or the directory vanished under us: recreate it.
                self._tmp.mkdir(parents=True, exist_ok=True)
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(self._tmp))

    def _publish(self, tmp: str, key: str) -> None:
        dest = self._path(key)
        try:
            os.replace(tmp, dest)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(tmp, dest)

    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        self._path(key)
        try:
            fd, tmp = self._mkstemp()
        except OSError as exc:
            raise _storage_error(exc, "write", key, self.root) from exc
        try:
            try:
                for chunk in chunks_of(data):
                    _write_all(fd, chunk)
            finally:
                os.close(fd)
            self._publish(tmp, key)
        except OSError as exc:
            _unlink_quiet(tmp)
            raise _storage_error(exc, "write", key, self.root) from exc
        except BaseException:
            _unlink_quiet(tmp)
            raise

    def put_file(self, key: str, src: BinaryIO) -> None:
        with self.writer() as w:
            while chunk := src.read(_COPY_CHUNK):
                w.write(chunk)
            w.commit(key)

    def writer(self) -> BlobWriter:
        try:
            return _FileWriter(self)
        except OSError as exc:
            raise _storage_error(exc, "write", None, self.root) from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            # os.read of the known size: half the cost of open().read() for small blobs.
            fd = os.open(path, _O_READ)
            try:
                size = os.fstat(fd).st_size
                data = os.read(fd, size)
                if len(data) < size:  # a short read (large blobs): finish it
                    parts = [data]
                    got = len(data)
                    while got < size and (chunk := os.read(fd, min(size - got, _COPY_CHUNK))):
                        parts.append(chunk)
                        got += len(chunk)
                    data = b"".join(parts)
                return data
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise BlobNotFoundError(
                f"blob {key!r} is missing from {self._blobs}", key=key, backend=self.name
            ) from None
        except OSError as exc:
            raise _storage_error(exc, "read", key, self.root) from exc

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(
                f"blob {key!r} is missing from {self._blobs}", key=key, backend=self.name
            ) from None
        except OSError as exc:
            raise _storage_error(exc, "read", key, self.root) from exc

    def size(self, key: str) -> int:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            raise BlobNotFoundError(
                f"blob {key!r} is missing", key=key, backend=self.name
            ) from None
        except OSError as exc:
            raise _storage_error(exc, "stat", key, self.root) from exc

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self._path(key))
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _storage_error(exc, "delete", key, self.root) from exc

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        if not self._blobs.is_dir():
            return
        for _dirpath, _dirnames, filenames in os.walk(self._blobs):
            for name in filenames:
                # Skip what the store cannot have written (stray files dropped in by hand).
                if name.startswith(prefix) and _SAFE.issuperset(name):
                    yield name

    def temp_files(self) -> list[Path]:
        """Leftover temporary files (from killed writers); ``gc`` removes old ones."""
        return sorted(self._tmp.glob("w-*")) if self._tmp.is_dir() else []


def _write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
