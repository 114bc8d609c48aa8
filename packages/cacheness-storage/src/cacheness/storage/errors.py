"""The one error hierarchy of cacheness (re-exported by ``cacheness``).

::

    CacheError(Exception)
    ├── CacheStorageError                       a blob or metadata write/read failed
    │   └── BlobNotFoundError(CacheStorageError, KeyError)
    ├── CacheSerializationError                 value cannot be (de)serialised
    ├── CacheIntegrityError                     content hash or signature mismatch
    ├── CacheConfigError(CacheError, ValueError)   bad or unknown option
    ├── CacheBackendError                       driver error, kept as __cause__
    ├── CachePluginError                        plugin missing, duplicate or malformed
    └── CacheKeyError(CacheError, ValueError)   a key that cannot be used

Every error carries its context as attributes (``key``, ``backend``) and
pickles with them, because errors cross process boundaries.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BlobNotFoundError",
    "CacheBackendError",
    "CacheConfigError",
    "CacheError",
    "CacheIntegrityError",
    "CacheKeyError",
    "CachePluginError",
    "CacheSerializationError",
    "CacheStorageError",
]


class CacheError(Exception):
    """Root of every error raised by cacheness."""

    def __init__(self, message: str, *, key: str | None = None, backend: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.backend = backend

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[CacheError], message: str, state: dict[str, Any]) -> CacheError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class CacheStorageError(CacheError):
    """Reading or writing stored data failed (disk full, vanished directory, ...)."""


class BlobNotFoundError(CacheStorageError, KeyError):
    """A blob that metadata refers to is not in the blob backend."""


class CacheSerializationError(CacheError):
    """A value (or user metadata) cannot be serialised or deserialised."""


class CacheIntegrityError(CacheError):
    """Stored content does not match its recorded hash, or its signature is bad."""


class CacheConfigError(CacheError, ValueError):
    """An option is unknown or has a value that cannot work."""


class CacheBackendError(CacheError):
    """A backend driver failed; the driver's exception is the ``__cause__``."""


class CachePluginError(CacheError):
    """A plugin is missing, registers a duplicate name, or is malformed."""


class CacheKeyError(CacheError, ValueError):
    """A key, or a key parameter, that cannot be used."""
