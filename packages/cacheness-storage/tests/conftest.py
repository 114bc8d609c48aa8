"""Store fixtures for the storage tests: one factory per metadata/blob backend pairing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cacheness.storage import BlobStore

StoreFactory = Callable[..., BlobStore]

#: (metadata backend, blob backend) pairings every store-level test runs on.
PAIRINGS = [
    "sqlite+file",
    "json+file",
    "memory+memory",
    "sqlalchemy-sqlite+file",
    pytest.param("postgresql+file", marks=pytest.mark.integration),
]


def _factory(pairing: str, root: Path, request: pytest.FixtureRequest) -> StoreFactory:
    meta, blobs = pairing.split("+")
    url = request.getfixturevalue("postgres_url") if meta == "postgresql" else None

    def make(**kwargs: Any) -> BlobStore:
        kwargs.setdefault("blob_backend", blobs)
        if meta == "sqlalchemy-sqlite":
            from cacheness.storage.backends import SqlAlchemyMetadataBackend

            kwargs.setdefault(
                "backend", SqlAlchemyMetadataBackend(f"sqlite:///{root.parent / 'sa.db'}")
            )
        elif meta == "postgresql":
            kwargs.setdefault("backend", url)
        else:
            kwargs.setdefault("backend", meta)
        path = None if (meta, blobs) == ("memory", "memory") else root
        return BlobStore(path, **kwargs)

    return make


@pytest.fixture(params=PAIRINGS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """``make_store(**options)`` opens a store on this test's pairing; all are closed after."""
    opened: list[BlobStore] = []
    make = _factory(request.param, tmp_path / "store", request)

    def tracked(**kwargs: Any) -> BlobStore:
        store = make(**kwargs)
        opened.append(store)
        return store

    tracked.pairing = request.param  # type: ignore[attr-defined]
    yield tracked
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> BlobStore:
    return make_store()


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[BlobStore]:
    """The default store: SQLite metadata and blob files under one folder."""
    with BlobStore(tmp_path / "store") as s:
        yield s


def _blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blobs").rglob("*") if p.is_file())


def _run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error::ResourceWarning"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture
def blob_files() -> Callable[[Path], list[Path]]:
    """``blob_files(root)``: every blob file under a file-backed store's folder."""
    return _blob_files


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_python(code, *args)``: run code in a fresh interpreter, capturing its output."""
    return _run_python
