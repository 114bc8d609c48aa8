"""cacheness.storage: a content-addressable store for Python objects.

>>> from cacheness.storage import BlobStore
>>> with BlobStore(backend="memory", blob_backend="memory") as store:
...     key = store.put({"a": 1}, key="k")
...     store.get("k")
{'a': 1}
"""

from cacheness.storage._maintenance import VerifyReport
from cacheness.storage._plugins import PluginManager, get_plugin_manager
from cacheness.storage._store import BlobStore
from cacheness.storage.errors import (
    BlobNotFoundError,
    CacheBackendError,
    CacheConfigError,
    CacheError,
    CacheIntegrityError,
    CacheKeyError,
    CachePluginError,
    CacheSerializationError,
    CacheStorageError,
)
from cacheness.storage.hookspecs import hookimpl
from cacheness.storage.security import VALID_SIGNED_FIELDS

__all__ = [
    "VALID_SIGNED_FIELDS",
    "BlobNotFoundError",
    "BlobStore",
    "CacheBackendError",
    "CacheConfigError",
    "CacheError",
    "CacheIntegrityError",
    "CacheKeyError",
    "CachePluginError",
    "CacheSerializationError",
    "CacheStorageError",
    "PluginManager",
    "VerifyReport",
    "get_plugin_manager",
    "hookimpl",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("cacheness-storage")
    raise AttributeError(f"module 'cacheness.storage' has no attribute {name!r}")
