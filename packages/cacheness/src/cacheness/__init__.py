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
    from cacheness._cache import UnifiedCache, cacheness
    from cacheness._config import CacheConfig, SecurityConfig
    from cacheness._custom_models import CustomMetadataBase, custom_metadata_model
    from cacheness._global import get_cache, reset_cache
    from cacheness.decorator import CacheInfo, cache_if, cached
    from cacheness.keys import KEY_VERSION
    from cacheness.storage.security import VALID_SIGNED_FIELDS

_LAZY: dict[str, tuple[str, str]] = {
    "CacheConfig": ("cacheness._config", "CacheConfig"),
    "CustomMetadataBase": ("cacheness._custom_models", "CustomMetadataBase"),
    "CacheInfo": ("cacheness.decorator", "CacheInfo"),
    "KEY_VERSION": ("cacheness.keys", "KEY_VERSION"),
    "SecurityConfig": ("cacheness._config", "SecurityConfig"),
    "UnifiedCache": ("cacheness._cache", "UnifiedCache"),
    "VALID_SIGNED_FIELDS": ("cacheness.storage.security", "VALID_SIGNED_FIELDS"),
    "cache_if": ("cacheness.decorator", "cache_if"),
    "cached": ("cacheness.decorator", "cached"),
    "cacheness": ("cacheness._cache", "cacheness"),
    "custom_metadata_model": ("cacheness._custom_models", "custom_metadata_model"),
    "get_cache": ("cacheness._global", "get_cache"),
    "reset_cache": ("cacheness._global", "reset_cache"),
}

__all__ = [
    "KEY_VERSION",
    "VALID_SIGNED_FIELDS",
    "CacheBackendError",
    "CacheConfig",
    "CacheConfigError",
    "CacheError",
    "CacheInfo",
    "CacheIntegrityError",
    "CacheKeyError",
    "CachePluginError",
    "CacheSerializationError",
    "CacheStorageError",
    "CustomMetadataBase",
    "SecurityConfig",
    "UnifiedCache",
    "__version__",
    "cache_if",
    "cached",
    "cacheness",
    "custom_metadata_model",
    "get_cache",
    "reset_cache",
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
