"""Hook specifications of the storage layer: the plugin contract.

A plugin is a module holding ``@hookimpl`` functions, published through the
``cacheness`` entry-point group::

    [project.entry-points.cacheness]
    myplugin = "cacheness_myplugin"

Each ``cacheness_register_*`` hook returns a list of classes carrying a
unique ``name``. Hooks are called once, when the plugin manager first builds
its name -> class registries; nothing on the hot path calls a hook. An
implementation may accept fewer arguments than its spec (none, today), so
specs can gain keyword arguments without breaking plugins.
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy
from cacheness.storage.abc import BlobBackend, Codec, MetadataBackend, TypeHandler

__all__ = [
    "cacheness_register_blob_backends",
    "cacheness_register_codecs",
    "cacheness_register_handlers",
    "cacheness_register_metadata_backends",
    "hookimpl",
    "hookspec",
]

hookspec = pluggy.HookspecMarker("cacheness")
hookimpl = pluggy.HookimplMarker("cacheness")


@hookspec
def cacheness_register_blob_backends() -> Sequence[type[BlobBackend]]:
    """Return blob-backend classes (subclasses of :class:`cacheness.storage.abc.BlobBackend`).

    Each class has a unique ``name``, the URL ``schemes`` it serves (so
    ``BlobStore(blob_backend="demo://x")`` finds it) and a ``from_url(url, **options)``
    classmethod.
    """
    raise NotImplementedError


@hookspec
def cacheness_register_metadata_backends() -> Sequence[type[MetadataBackend]]:
    """Return metadata-backend classes (subclasses of :class:`cacheness.storage.abc.MetadataBackend`).

    Each class has a unique ``name``, the URL ``schemes`` it serves and a
    ``from_url(url, **options)`` classmethod.
    """
    raise NotImplementedError


@hookspec
def cacheness_register_handlers() -> Sequence[type[TypeHandler]]:
    """Return type-handler classes (subclasses of :class:`cacheness.storage.abc.TypeHandler`).

    Each class has a unique ``name``, the ``types`` it serialises (or a
    ``can_handle(obj)`` classmethod for duck types) and a ``priority``: among
    handlers that accept a value, the most specific type wins, then the higher
    priority.
    """
    raise NotImplementedError


@hookspec
def cacheness_register_codecs() -> Sequence[type[Codec]]:
    """Return codec classes (subclasses of :class:`cacheness.storage.abc.Codec`).

    Each class has a unique ``name``; the name is stored with every entry the
    codec encoded, so it must never change meaning.
    """
    raise NotImplementedError
