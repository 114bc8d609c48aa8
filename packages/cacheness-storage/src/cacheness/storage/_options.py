"""BlobStore's constructor options resolved into a signer, a codec and backends."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cacheness.storage._plugins import PluginManager
from cacheness.storage.abc import BlobBackend, MetadataBackend
from cacheness.storage.errors import CacheConfigError
from cacheness.storage.security._signing import Signer, check_signed_fields, load_signing_key


def _make_signer(
    signing_key: bytes | str | os.PathLike[str] | None,
    custom_signed_fields: list[str] | tuple[str, ...] | None,
    require_signatures: bool,
) -> Signer | None:
    fields = check_signed_fields(custom_signed_fields)
    key = load_signing_key(signing_key)
    if require_signatures and key is None:
        raise CacheConfigError(
            "require_signatures=True needs a signing_key (bytes, a key-file path, "
            "or CACHENESS_SIGNING_KEY)"
        )
    return None if key is None else Signer(key, fields)


def _make_codec(pm: PluginManager, name: str, level: int | None) -> Any:
    cls = pm.lookup("codecs", name)
    if level is None:
        return pm.codec(name)
    try:
        return cls(level=level)
    except TypeError:
        raise CacheConfigError(f"codec {name!r} takes no compression_level") from None


def _open_backends(
    pm: PluginManager,
    root: Path | None,
    backend: str | MetadataBackend,
    blob_backend: str | BlobBackend,
    metadata_backend_options: Mapping[str, Any] | None,
    blob_backend_options: Mapping[str, Any] | None,
) -> tuple[Any, Any]:
    """The metadata backend, then the blob backend (closing the first if the second fails)."""
    metadata = _resolve(
        pm, root, "metadata_backends", backend, MetadataBackend, metadata_backend_options
    )
    try:
        blobs = _resolve(pm, root, "blob_backends", blob_backend, BlobBackend, blob_backend_options)
    except BaseException:
        metadata.close()
        raise
    return metadata, blobs


def _resolve(
    pm: PluginManager,
    root: Path | None,
    kind: str,
    spec: Any,
    base: type,
    options: Mapping[str, Any] | None,
) -> Any:
    if isinstance(spec, base):
        return spec
    if not isinstance(spec, str):
        raise CacheConfigError(
            f"{kind[:-1].replace('_', ' ')} must be a name, a URL or a "
            f"{base.__name__} instance, not {type(spec).__name__}"
        )
    opts = dict(options or {})
    if "://" in spec:
        scheme = spec.split("://", 1)[0]
        try:
            cls = pm.lookup(kind, scheme)
        except CacheConfigError:
            if "+" not in scheme:
                raise
            cls = pm.lookup(kind, scheme.split("+", 1)[0])
        return cls.from_url(spec, **opts)
    cls = pm.lookup(kind, spec)
    return _from_directory(root, cls, kind, opts)


def _from_directory(root: Path | None, cls: Any, kind: str, opts: dict[str, Any]) -> Any:
    needs_dir = {"sqlite": "metadata.sqlite", "json": "metadata.json"}
    from cacheness.storage.backends import FilesystemBlobBackend

    if kind == "metadata_backends" and cls.name in needs_dir:
        if root is None:
            raise CacheConfigError(
                f"metadata backend {cls.name!r} keeps a file: give BlobStore a path, "
                "or use backend='memory'"
            )
        return cls(root / needs_dir[cls.name], **opts)
    if issubclass(cls, FilesystemBlobBackend):
        if root is None:
            raise CacheConfigError(
                "the 'file' blob backend needs a folder: give BlobStore a path, "
                "or use blob_backend='memory'"
            )
        return cls(root, **opts)
    return cls(**opts)
