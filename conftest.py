"""Fixtures shared by every test folder: real services, gated the same way.

A service test skips with a stated reason when its server is absent, and
fails instead when ``CACHENESS_REQUIRE_SERVICES`` is set (CI sets it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_SERVICES = bool(os.environ.get("CACHENESS_REQUIRE_SERVICES"))
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _service_missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (CACHENESS_REQUIRE_SERVICES is set, so this is a failure)")
    pytest.skip(reason)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """URL of a reachable PostgreSQL server (``CACHENESS_TEST_POSTGRES_URL``)."""
    url = os.environ.get("CACHENESS_TEST_POSTGRES_URL", DEFAULT_PG_URL)
    try:
        import psycopg  # noqa: F401
        import sqlalchemy
    except ImportError:
        _service_missing("psycopg is not installed: pip install 'cacheness-storage[postgres]'")
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.OperationalError as exc:
        _service_missing(f"PostgreSQL not reachable at {url}: {exc.orig}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL schema for one test, dropped afterwards."""
    import sqlalchemy

    schema = "t_" + uuid.uuid4().hex[:12]
    engine = sqlalchemy.create_engine(postgres_server_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in postgres_server_url else "?"
    try:
        yield f"{postgres_server_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 endpoint on loopback: ``CACHENESS_TEST_S3_ENDPOINT`` or a moto server we start."""
    url = os.environ.get("CACHENESS_TEST_S3_ENDPOINT")
    if url:
        yield url
        return
    try:
        import moto.server  # noqa: F401
    except ImportError:
        _service_missing("moto[server] is not installed, so no local S3 endpoint can be started")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not _port_open("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                _service_missing("moto server did not start on 127.0.0.1")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Standard AWS variables pointed at the loopback endpoint; returns the endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_endpoint


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted for one test: a disk that fills up (mounting needs root)."""
    vol = tmp_path / "vol"
    vol.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(vol)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr!r}")
    try:
        yield vol
    finally:
        subprocess.run(["umount", str(vol)], check=True)
