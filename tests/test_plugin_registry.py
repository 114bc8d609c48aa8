"""The plugin manager in-process: built-ins through hooks, registries, errors."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from cacheness.storage import BlobStore, CacheConfigError, CachePluginError, hookimpl
from cacheness.storage._plugins import PluginManager
from cacheness.storage.abc import Codec, TypeHandler


@pytest.fixture
def pm() -> PluginManager:
    return PluginManager(load_entrypoints=False)


def test_builtins_register_through_the_hooks(pm: PluginManager) -> None:
    assert {"none", "lz4", "zstd", "gzip"} <= set(pm.codecs())
    assert {"file", "memory"} <= set(pm.blob_backends())
    assert {"sqlite", "json", "memory"} <= set(pm.metadata_backends())
    assert {"bytes", "pickle"} <= set(pm.handlers())
    names = {p for p in (pm.get_name(x) for x in pm.get_plugins()) if p}
    assert "cacheness.storage.builtins" in names


def test_unknown_name_lists_known_ones_and_install_hint(pm: PluginManager) -> None:
    with pytest.raises(CacheConfigError) as exc:
        pm.lookup("blob_backends", "s4")
    assert "file" in str(exc.value) and "memory" in str(exc.value)
    with pytest.raises(CacheConfigError, match="pip install 'cacheness-storage\\[postgres\\]'"):
        pm.lookup("metadata_backends", "postgresql+nosuchdriver")
    with pytest.raises(CacheConfigError, match="Did you mean 'zstd'"):
        pm.lookup("codecs", "zstdd")
    assert issubclass(CacheConfigError, ValueError)


def test_store_rejects_unknown_backend_and_codec(tmp_path: Any) -> None:
    with pytest.raises(CacheConfigError, match="known"):
        BlobStore(tmp_path, backend="nosuch")
    with pytest.raises(CacheConfigError, match="known"):
        BlobStore(tmp_path, compression="brotli-x")


class _Rot13Codec(Codec):
    name: ClassVar[str] = "xor"

    def encode(self, data: Any) -> bytes:
        return bytes(b ^ 0x5A for b in bytes(data))

    def decode(self, data: Any) -> bytes:
        return bytes(b ^ 0x5A for b in bytes(data))


class _Celsius(float):
    pass


class _CelsiusHandler(TypeHandler):
    name: ClassVar[str] = "celsius"
    types: ClassVar[tuple[type, ...]] = (_Celsius,)

    def dumps(self, obj: Any) -> bytes:
        return repr(float(obj)).encode()

    def loads(self, data: bytes) -> Any:
        return _Celsius(float(data))


class _Plugin:
    @hookimpl
    def cacheness_register_codecs(self) -> list[type[Codec]]:
        return [_Rot13Codec]

    @hookimpl
    def cacheness_register_handlers(self) -> list[type[TypeHandler]]:
        return [_CelsiusHandler]


def test_in_process_plugin_adds_codec_and_handler(pm: PluginManager, tmp_path: Any) -> None:
    pm.register_module(_Plugin(), name="test-plugin")
    with BlobStore(tmp_path, compression="xor", plugin_manager=pm) as store:
        store.put(_Celsius(21.5), key="t")
        store.put(b"\x00" * 1000, key="zeros")
        value = store.get("t")
        assert type(value) is _Celsius and value == 21.5
        assert store.get_metadata("t")["handler"] == "celsius"
        assert store.get("zeros") == b"\x00" * 1000
        # The handler is the most specific one: a float subclass beats pickle.
        assert pm.handler_for(_Celsius(1.0)).name == "celsius"
        assert pm.handler_for(1.0).name != "celsius"


def test_duplicate_names_are_an_error(pm: PluginManager) -> None:
    class Dup(Codec):
        name: ClassVar[str] = "lz4"

        def encode(self, data: Any) -> bytes:
            return bytes(data)

        def decode(self, data: Any) -> bytes:
            return bytes(data)

    class P:
        @hookimpl
        def cacheness_register_codecs(self) -> list[type[Codec]]:
            return [Dup]

    pm.register_module(P(), name="dup")
    with pytest.raises(CachePluginError, match="two codecs are named 'lz4'"):
        pm.codecs()


def test_a_misspelt_hook_fails_fast(pm: PluginManager) -> None:
    class Typo:
        @hookimpl
        def cacheness_register_codec(self) -> list[Any]:
            return []

    with pytest.raises(CachePluginError, match="cacheness_register_codec"):
        pm.register_module(Typo(), name="typo")
    assert pm.get_plugin("typo") is None


def test_non_subclass_is_rejected(pm: PluginManager) -> None:
    class Bad:
        @hookimpl
        def cacheness_register_handlers(self) -> list[Any]:
            return [int]

    pm.register_module(Bad(), name="bad")
    with pytest.raises(CachePluginError, match="not a subclass"):
        pm.handlers()
