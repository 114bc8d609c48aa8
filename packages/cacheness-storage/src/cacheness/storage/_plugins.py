"""The plugin manager and the name -> class registries built from its hooks.

Nothing happens at import: :func:`get_plugin_manager` builds the manager on
first use, registers the built-ins through the same hooks third parties use,
loads entry points of group ``cacheness`` (unless
``CACHENESS_DISABLE_PLUGIN_AUTOLOAD`` is set; ``CACHENESS_PLUGINS=a,b``
restricts them to those names), and resolves every hook once into dicts.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from difflib import get_close_matches
from types import ModuleType
from typing import Any, TypeVar

import pluggy
from cacheness.storage import hookspecs
from cacheness.storage.abc import BlobBackend, Codec, MetadataBackend, TypeHandler
from cacheness.storage.errors import CacheConfigError, CachePluginError

__all__ = ["PluginManager", "get_plugin_manager", "reset_plugin_manager"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cacheness"

#: Names a user may ask for that an optional extra provides.
INSTALL_HINTS: dict[str, str] = {
    "s3": "pip install 'cacheness-storage[s3]'",
    "postgresql": "pip install 'cacheness-storage[postgres]'",
    "postgresql+psycopg": "pip install 'cacheness-storage[postgres]'",
    "polars": "pip install 'cacheness-storage[polars]'",
    "dill": "pip install 'cacheness-storage[dill]'",
    "pandas": "pip install 'cacheness-storage[pandas]'",
}

T = TypeVar("T")


def _flatten(results: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in results:
        if item is None:
            continue
        if isinstance(item, type):
            out.append(item)
        else:
            out.extend(item)
    return out


class PluginManager(pluggy.PluginManager):
    """pluggy manager for project ``cacheness`` with the storage hookspecs.

    The cache layer subclasses it to add its own hookspecs to the same
    manager (one marker, one entry-point group for both layers).
    """

    def __init__(self, *, load_entrypoints: bool = True) -> None:
        super().__init__("cacheness")
        self.add_hookspecs(hookspecs)
        from cacheness.storage import _builtins

        self.register(_builtins, name="cacheness.storage.builtins")
        if load_entrypoints and not os.environ.get("CACHENESS_DISABLE_PLUGIN_AUTOLOAD"):
            self._load_entrypoints()
        if os.environ.get("CACHENESS_TRACE_PLUGINS"):
            self.trace.root.setwriter(lambda msg: logger.debug("%s", msg.rstrip()))
            self.enable_tracing()
        self._check()
        self._registries: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._handler_cache: dict[type, TypeHandler] = {}

    def _load_entrypoints(self) -> None:
        only = os.environ.get("CACHENESS_PLUGINS")
        if only is None:
            self.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            return
        for name in [n.strip() for n in only.split(",") if n.strip()]:
            self.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)

    def _check(self) -> None:
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            self.unregister(exc.plugin)
            raise CachePluginError(
                f"plugin {exc.plugin!r} implements a hook cacheness does not define: {exc}; "
                "check the spelling against cacheness.storage.hookspecs"
            ) from exc

    def register_module(self, module: ModuleType | object, name: str | None = None) -> None:
        """Register hookimpls in-process (tests, notebooks) and rebuild the registries."""
        self.register(module, name=name)
        self._check()
        self._registries.clear()
        self._handler_cache.clear()

    # ------------------------------------------------------------- registries

    def _collect(self, kind: str, base: type) -> dict[str, Any]:
        cached = self._registries.get(kind)
        if cached is not None:
            return cached
        with self._lock:
            hook = getattr(self.hook, f"cacheness_register_{kind}")
            registry: dict[str, Any] = {}
            for cls in _flatten(hook()):
                if not (isinstance(cls, type) and issubclass(cls, base)):
                    raise CachePluginError(
                        f"cacheness_register_{kind} returned {cls!r}, which is not a subclass "
                        f"of {base.__module__}.{base.__qualname__}"
                    )
                name = getattr(cls, "name", "")
                if not name:
                    raise CachePluginError(f"{cls.__qualname__} registers no `name`")
                other = registry.get(name)
                if other is not None and other is not cls:
                    raise CachePluginError(
                        f"two {kind} are named {name!r}: {other.__module__}.{other.__qualname__} "
                        f"and {cls.__module__}.{cls.__qualname__}; uninstall one of them"
                    )
                registry[name] = cls
            self._registries[kind] = registry
            return registry

    def blob_backends(self) -> dict[str, type[BlobBackend]]:
        return self._collect("blob_backends", BlobBackend)

    def metadata_backends(self) -> dict[str, type[MetadataBackend]]:
        return self._collect("metadata_backends", MetadataBackend)

    def codecs(self) -> dict[str, type[Codec]]:
        return self._collect("codecs", Codec)

    def handlers(self) -> dict[str, type[TypeHandler]]:
        return self._collect("handlers", TypeHandler)

    # -------------------------------------------------------------- lookups

    def lookup(self, kind: str, name: str) -> type[Any]:
        """The class registered as ``name`` (or serving URL scheme ``name``)."""
        registry: dict[str, type[Any]] = getattr(self, kind)()
        cls = registry.get(name)
        if cls is not None:
            return cls
        for candidate in registry.values():
            if name in getattr(candidate, "schemes", ()):
                return candidate
        known = sorted(
            set(registry) | {s for c in registry.values() for s in getattr(c, "schemes", ())}
        )
        message = f"unknown {kind.replace('_', ' ')[:-1]} {name!r}; known: {', '.join(known)}"
        hint = INSTALL_HINTS.get(name) or INSTALL_HINTS.get(name.split("+")[0])
        if hint:
            message += f". {name!r} needs an optional extra: {hint}"
        else:
            close = get_close_matches(name, known, n=1)
            if close:
                message += f". Did you mean {close[0]!r}?"
        raise CacheConfigError(message)

    def handler_for(self, obj: object, *, allowed: Iterable[str] | None = None) -> TypeHandler:
        """The handler for ``obj``: most specific type first, then highest priority."""
        t = type(obj)
        if allowed is None:
            hit = self._handler_cache.get(t)
            if hit is not None:
                return hit
        mro = t.__mro__
        best: tuple[int, int, str] | None = None
        best_cls: type[TypeHandler] | None = None
        cacheable = True
        names = None if allowed is None else set(allowed)
        for name, cls in self.handlers().items():
            if names is not None and name not in names:
                continue
            custom = cls.can_handle.__func__ is not TypeHandler.can_handle.__func__  # type: ignore[attr-defined]
            if custom:
                if not cls.can_handle(obj):
                    continue
                cacheable = False
                distance = 0
            else:
                matches = [mro.index(k) for k in cls.types if k in mro]
                if not matches:
                    continue
                distance = min(matches)
            rank = (distance, -cls.priority, name)
            if best is None or rank < best:
                best, best_cls = rank, cls
        if best_cls is None:
            from cacheness.storage.errors import CacheSerializationError

            raise CacheSerializationError(
                f"no handler can serialise a value of type {t.__module__}.{t.__qualname__}; "
                "register a TypeHandler for it (see docs/plugins.md) or convert it first"
            )
        handler = self._instance(best_cls)
        if cacheable and allowed is None:
            self._handler_cache[t] = handler
        return handler

    def handler(self, name: str) -> TypeHandler:
        return self._instance(self.lookup("handlers", name))

    def codec(self, name: str) -> Codec:
        return self._instance(self.lookup("codecs", name))

    def _instance(self, cls: type[T]) -> T:
        key = f"instance:{cls.__module__}.{cls.__qualname__}"
        inst = self._registries.get(key)
        if inst is None:
            inst = cls()
            self._registries[key] = inst
        return inst


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, built on first use."""
    global _manager
    if _manager is None:
        with _manager_lock:
            if _manager is None:
                _manager = PluginManager()
    return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (the next use rebuilds it, reloading entry points)."""
    global _manager
    with _manager_lock:
        _manager = None
