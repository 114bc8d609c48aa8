"""Fixtures for the cache-layer tests: a cache per backend and a settable clock."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cacheness import UnifiedCache, cacheness


class Clock:
    """A settable clock; a cache reads time only through ``cache._clock``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(
    params=[
        "sqlite",
        "json",
        "memory",
        "sqlalchemy-sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A metadata backend name, or a SQLAlchemy URL (the index in that database:
    a SQLite file through SQLAlchemy, or a fresh PostgreSQL schema)."""
    if request.param == "sqlalchemy-sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.param)


@pytest.fixture
def open_cache(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., UnifiedCache]]:
    """``open_cache(backend, **options)``: caches in one folder, with the test clock;
    all closed at the end."""
    opened: list[UnifiedCache] = []

    def make(backend: str, **options: Any) -> UnifiedCache:
        options.setdefault("cache_dir", tmp_path / "cache")
        options.setdefault("metadata_backend", backend)
        cache = cacheness(**options)
        cache._clock = clock
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        cache.close()


@pytest.fixture
def make_cache(
    backend: str, open_cache: Callable[..., UnifiedCache]
) -> Callable[..., UnifiedCache]:
    """Open caches on ``backend`` (see ``open_cache``)."""
    return functools.partial(open_cache, backend)


@pytest.fixture
def cache(make_cache: Callable[..., UnifiedCache]) -> UnifiedCache:
    return make_cache()
