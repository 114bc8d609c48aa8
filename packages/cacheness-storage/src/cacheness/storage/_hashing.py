"""Content hashes: XXH3-128 by default (tens of GB/s), SHA-256 when a cryptographic digest is wanted.

A content hash is written ``"<algorithm>:<hex>"`` so every entry says how to
check itself; the hex part alone names the blob in content-addressed stores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, BinaryIO, Protocol

from cacheness.storage.abc import Buffer
from cacheness.storage.errors import CacheConfigError

__all__ = ["HASH_ALGORITHMS", "HashingReader", "Hasher", "hash_chunks", "new_hasher", "split_hash"]

HASH_ALGORITHMS = ("xxh3_128", "sha256")


class Hasher(Protocol):
    def update(self, data: Buffer, /) -> None: ...
    def hexdigest(self) -> str: ...


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise CacheConfigError(
        f"unknown hash_algorithm {algorithm!r}; choose one of {', '.join(HASH_ALGORITHMS)}"
    )


def hash_chunks(chunks: Iterable[Buffer], algorithm: str) -> str:
    h = new_hasher(algorithm)
    for c in chunks:
        h.update(c)
    return f"{algorithm}:{h.hexdigest()}"


def split_hash(content_hash: str) -> tuple[str, str]:
    algorithm, _, digest = content_hash.partition(":")
    return algorithm, digest


class HashingReader:
    """A read-only binary file that hashes every byte handed out.

    Handlers that stream (numpy ``readinto``) read through it; the store then
    compares :meth:`hexdigest` with the recorded hash.
    """

    def __init__(self, raw: BinaryIO, algorithm: str) -> None:
        self._raw = raw
        self._hasher = new_hasher(algorithm)
        self.algorithm = algorithm
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hasher.update(data)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n: int = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self._hasher.update(memoryview(buffer).cast("B")[:n])
            self.bytes_read += n
        return n

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def content_hash(self) -> str:
        return f"{self.algorithm}:{self._hasher.hexdigest()}"

    def close(self) -> None:
        self._raw.close()
