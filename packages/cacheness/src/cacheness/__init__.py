"""cacheness: a persistent cache for Python objects.

Heavy modules (numpy, pandas, blosc2, dill, the SQLAlchemy ORM) load on
first use, through the lazy ``__getattr__`` below, so ``import cacheness``
stays fast.
"""

# cacheness-storage ships cacheness/storage/ without a cacheness/__init__.py;
# with editable installs the two live in different src/ folders, and this
# regular package would otherwise end the search before finding it.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

from typing import TYPE_CHECKING, Any

from cacheness.storage.errors import (
    CacheBackendError,
    CacheConfigError,
    CacheError,
    CacheIntegrityError,
    CacheKeyError,
    CachePluginError,
    CacheSerializationError,
    CacheStorageError,
)

if TYPE_CHECKING:
    pass

_LAZY: dict[str, tuple[str, str]] = {}

__all__ = [
    "CacheBackendError",
    "CacheConfigError",
    "CacheError",
    "CacheIntegrityError",
    "CacheKeyError",
    "CachePluginError",
    "CacheSerializationError",
    "CacheStorageError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("cacheness")
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'cacheness' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value
