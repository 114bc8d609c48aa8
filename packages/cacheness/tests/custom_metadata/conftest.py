"""Fixtures for the custom-metadata tests: caches on every SQL backend."""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from cacheness import UnifiedCache

HERE = Path(__file__).parent


def load_models() -> ModuleType:
    """The shared models module, imported once per process."""
    name = "cacheness_test_custom_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "_models.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def models() -> ModuleType:
    return load_models()


@pytest.fixture(
    params=[
        "sqlite",
        "sqlalchemy-sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
    ]
)
def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The SQL metadata backends: the raw-sqlite3 index, the SQLAlchemy index on a
    SQLite file, and the SQLAlchemy index on a fresh PostgreSQL schema."""
    if request.param == "sqlalchemy-sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.param)


@pytest.fixture
def make_sql_cache(
    sql_backend: str, open_cache: Callable[..., UnifiedCache], models: ModuleType
) -> Callable[..., UnifiedCache]:
    return functools.partial(open_cache, sql_backend)


@pytest.fixture
def sql_cache(make_sql_cache: Callable[..., UnifiedCache]) -> UnifiedCache:
    return make_sql_cache()


@pytest.fixture
def registry_snapshot() -> Iterator[None]:
    """Models registered inside a test are forgotten afterwards."""
    from cacheness import _custom_models

    before = dict(_custom_models._registry)
    yield
    _custom_models._registry.clear()
    _custom_models._registry.update(before)
