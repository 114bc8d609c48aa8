"""Fixtures for the ``@cached`` tests: a SQLite-backed cache and a body-run counter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cacheness import UnifiedCache, cacheness


class Counter:
    """Counts body runs (thread-safe)."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()
        self.label: object = None

    def __call__(self) -> int:
        with self.lock:
            self.n += 1
            return self.n


@pytest.fixture
def runs() -> Counter:
    return Counter()


@pytest.fixture
def sqlite_cache(tmp_path: Path) -> Iterator[UnifiedCache]:
    with cacheness(cache_dir=tmp_path / "cache") as cache:
        yield cache
