"""CacheConfig and SecurityConfig: typed, keyword-only, and strict about names."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cacheness.storage.errors import CacheConfigError

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_MAX_CACHE_SIZE_MB",
    "EVICTION_POLICIES",
    "CacheConfig",
    "SecurityConfig",
    "unknown_option",
]

#: Where ``cacheness()`` keeps its data unless told otherwise (or ``$CACHENESS_DIR``).
DEFAULT_CACHE_DIR = "./.cacheness"
#: The default size limit (MiB). Reaching it evicts entries and logs at INFO;
#: ``max_cache_size_mb=None`` turns the limit off.
DEFAULT_MAX_CACHE_SIZE_MB = 2048
EVICTION_POLICIES = ("lru", "lfu", "fifo")
METADATA_BACKENDS = ("sqlite", "json", "memory")


def unknown_option(name: str, valid: list[str], where: str) -> CacheConfigError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid names: {', '.join(valid)}"
    return CacheConfigError(f"unknown {where} option {name!r}{hint}")


class _Strict:
    """Shared by both configs: unknown keywords name the closest valid one."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Any:
        valid = cls.field_names()
        for name in kwargs:
            if name not in valid:
                raise unknown_option(name, valid, cls.__name__)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Any:
        valid = self.field_names()
        for name in changes:
            if name not in valid:
                raise unknown_option(name, valid, type(self).__name__)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecurityConfig(_Strict):
    """Signing and verification of stored entries.

    ``signing_key``: bytes (at least 32), a path to a key file (created with
    mode 0600 when absent) or None (``$CACHENESS_SIGNING_KEY`` as hex when set).
    ``require_signatures``: never load an unsigned or badly signed entry.
    ``custom_signed_fields``: which metadata fields the HMAC covers (see
    ``VALID_SIGNED_FIELDS``). ``delete_invalid_signatures``: remove an entry
    whose signature fails, rather than only reporting a miss.
    ``allow_dill``: load values stored with dill (default: unless signatures are required).
    """

    signing_key: bytes | str | os.PathLike[str] | None = None
    require_signatures: bool = False
    custom_signed_fields: tuple[str, ...] | list[str] | None = None
    delete_invalid_signatures: bool = True
    allow_dill: bool | None = None

    def __post_init__(self) -> None:
        from cacheness.storage.security import VALID_SIGNED_FIELDS

        if self.custom_signed_fields is not None:
            bad = [f for f in self.custom_signed_fields if f not in VALID_SIGNED_FIELDS]
            if bad:
                raise CacheConfigError(
                    f"unknown signed field(s) {bad}; valid: {', '.join(sorted(VALID_SIGNED_FIELDS))}"
                )

    def __repr__(self) -> str:  # never show the key
        key = None if self.signing_key is None else "<set>"
        return (
            f"SecurityConfig(signing_key={key}, require_signatures={self.require_signatures}, "
            f"custom_signed_fields={self.custom_signed_fields!r}, "
            f"delete_invalid_signatures={self.delete_invalid_signatures}, "
            f"allow_dill={self.allow_dill})"
        )


def _default_dir() -> str:
    return os.environ.get("CACHENESS_DIR") or DEFAULT_CACHE_DIR


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheConfig(_Strict):
    """Everything ``cacheness(...)`` can be told; each field is also a keyword of it.

    ``cache_dir``: folder for the index, metadata and blobs (default
    ``$CACHENESS_DIR`` or ``./.cacheness``). ``metadata_backend``:
    ``"sqlite"`` (default), ``"json"``, ``"memory"`` or a SQLAlchemy URL
    (``"postgresql+psycopg://..."``: the store's metadata and the cache index
    both live in that database). ``blob_backend``:
    ``"file"``, ``"memory"`` or a URL such as ``"s3://bucket/prefix"`` (default:
    ``"memory"`` with the memory metadata backend, else ``"file"``).
    ``default_ttl_seconds``: lifetime of an entry put without ``ttl_seconds``
    (None: never expires). ``max_cache_size_mb`` (MiB, stored bytes after
    deduplication; default 2048, None for no limit) and ``max_entries``
    (None: no limit) are enforced on every put with ``eviction_policy``
    ``"lru"``, ``"lfu"`` or ``"fifo"``. ``memory_cache_entries``: how many
    recently used values each process keeps in memory (0: none); a repeated
    hit returns the same object, as ``functools.lru_cache`` does, so copy a
    value before changing it in place. Writes by any process are seen.
    ``compression``: codec of the storage layer (``"lz4"``, ``"zstd"``, ``"none"``...).
    ``access_flush_seconds``: how long access times and hit counts may wait
    in memory before they are written (they are also written once reads of
    4096 distinct keys wait, before an eviction, by ``stats()`` and on ``close()``).
    """

    cache_dir: str | os.PathLike[str] = dataclasses.field(default_factory=_default_dir)
    metadata_backend: str = "sqlite"
    blob_backend: str | None = None
    default_ttl_seconds: float | None = None
    max_cache_size_mb: float | None = DEFAULT_MAX_CACHE_SIZE_MB
    max_entries: int | None = None
    eviction_policy: str = "lru"
    memory_cache_entries: int = 0
    compression: str = "lz4"
    access_flush_seconds: float = 1.0
    security: SecurityConfig = dataclasses.field(default_factory=SecurityConfig)

    def __post_init__(self) -> None:
        # A SQLAlchemy URL ("postgresql+psycopg://...") puts the index there too.
        is_url = isinstance(self.metadata_backend, str) and "://" in self.metadata_backend
        if not is_url and self.metadata_backend not in METADATA_BACKENDS:
            close = difflib.get_close_matches(str(self.metadata_backend), METADATA_BACKENDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CacheConfigError(
                f"metadata_backend={self.metadata_backend!r} is not supported by the cache"
                f"{hint}; choose one of {', '.join(METADATA_BACKENDS)}, or a SQLAlchemy URL "
                "such as 'postgresql+psycopg://user@host/db'"
            )
        if self.eviction_policy not in EVICTION_POLICIES:
            raise CacheConfigError(
                f"eviction_policy={self.eviction_policy!r}; choose one of "
                f"{', '.join(EVICTION_POLICIES)}"
            )
        _positive("default_ttl_seconds", self.default_ttl_seconds)
        _positive("max_cache_size_mb", self.max_cache_size_mb)
        _positive("max_entries", self.max_entries, integer=True)
        entries = self.memory_cache_entries
        if isinstance(entries, bool) or not isinstance(entries, int) or entries < 0:
            raise CacheConfigError(
                f"memory_cache_entries must be an int >= 0, not {self.memory_cache_entries!r}"
            )
        if not isinstance(self.security, SecurityConfig):
            raise CacheConfigError(
                f"security must be a SecurityConfig, not {type(self.security).__name__}"
            )
        _positive("access_flush_seconds", self.access_flush_seconds, allow_zero=True)

    @property
    def path(self) -> Path:
        return Path(self.cache_dir).expanduser().absolute()

    @property
    def max_bytes(self) -> int | None:
        return None if self.max_cache_size_mb is None else int(self.max_cache_size_mb * 1024 * 1024)


def _positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    if value is None and not allow_zero:
        return
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an int" if integer else "a number"
        raise CacheConfigError(f"{name} must be {kind} or None, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise CacheConfigError(f"{name} must be > 0 (or None for no limit), not {value!r}")
