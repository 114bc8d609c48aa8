"""get_cache/reset_cache, the exported names, and a light ``import cacheness``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cacheness
import pytest
from cacheness import CacheConfig, CacheError, get_cache, reset_cache


def test_reset_cache_closes_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHENESS_DIR", str(tmp_path / "default"))
    first = reset_cache()
    assert get_cache() is first and get_cache() is first
    first.put(1, x=1)
    second = reset_cache(CacheConfig(cache_dir=tmp_path / "other"))
    try:
        assert get_cache() is second
        assert second.config.path == (tmp_path / "other").absolute()
        with pytest.raises(CacheError, match="closed"):
            first.get(x=1)
        assert second.get(x=1) is None
        third = reset_cache(cache_dir=tmp_path / "default")
        assert third.get(x=1) == 1
    finally:
        get_cache().close()


def test_exported_names() -> None:
    for name in (
        "cacheness",
        "UnifiedCache",
        "CacheConfig",
        "SecurityConfig",
        "get_cache",
        "reset_cache",
        "VALID_SIGNED_FIELDS",
        "CacheKeyError",
        "CacheConfigError",
        "CacheIntegrityError",
    ):
        assert name in cacheness.__all__
        assert getattr(cacheness, name) is not None
    from cacheness.storage import VALID_SIGNED_FIELDS

    assert cacheness.VALID_SIGNED_FIELDS is VALID_SIGNED_FIELDS


def test_import_is_light() -> None:
    code = (
        "import sys, json, cacheness;"
        "from cacheness import cacheness as c, CacheConfig, get_cache;"
        "print(json.dumps([m for m in ('numpy', 'pandas', 'blosc2', 'dill', 'sqlalchemy',"
        " 'polars') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
