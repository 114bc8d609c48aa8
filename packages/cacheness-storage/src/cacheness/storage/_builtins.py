"""The built-in handlers, codecs and backends, registered through the public hooks."""

from __future__ import annotations

from collections.abc import Sequence

from cacheness.storage.abc import BlobBackend, Codec, MetadataBackend, TypeHandler
from cacheness.storage.hookspecs import hookimpl


@hookimpl
def cacheness_register_codecs() -> Sequence[type[Codec]]:
    from cacheness.storage.codecs import BUILTIN_CODECS

    return BUILTIN_CODECS


@hookimpl
def cacheness_register_handlers() -> Sequence[type[TypeHandler]]:
    from cacheness.storage.handlers import BUILTIN_HANDLERS

    return BUILTIN_HANDLERS


@hookimpl
def cacheness_register_blob_backends() -> Sequence[type[BlobBackend]]:
    from cacheness.storage.backends import BUILTIN_BLOB_BACKENDS

    return BUILTIN_BLOB_BACKENDS


@hookimpl
def cacheness_register_metadata_backends() -> Sequence[type[MetadataBackend]]:
    from cacheness.storage.backends import BUILTIN_METADATA_BACKENDS

    return BUILTIN_METADATA_BACKENDS
