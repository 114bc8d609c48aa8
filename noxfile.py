"""Every way to test, lint, type-check and benchmark cacheness.

``nox`` runs the default sessions (what CI runs): tests, storage_only, lint,
typecheck, services. ``nox -s bench`` runs the benchmarks (never by default).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nox

nox.needs_version = ">=2025.02.09"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = "CI" in os.environ
nox.options.sessions = ["tests", "storage_only", "lint", "typecheck", "services"]

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml("pyproject.toml")
STORAGE = "packages/cacheness-storage"
CACHE = "packages/cacheness"
TEST_DIRS = [f"{STORAGE}/tests", f"{CACHE}/tests", "tests"]


def _install_dev(session: nox.Session, *groups: str) -> None:
    """Both packages editable with every extra, plus dependency groups."""
    session.install(f"-e{STORAGE}[all]", f"-e{CACHE}[all]")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session
def tests(session: nox.Session) -> None:
    """Both packages and the cross-package tests, against editable installs (no services)."""
    _install_dev(session, "test", "bench")
    session.run("pytest", *TEST_DIRS, "-m", "not integration and not slow", *session.posargs)


@nox.session
def storage_only(session: nox.Session) -> None:
    """cacheness-storage's own tests with only its wheel installed (no pandas, dill, cache layer)."""
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("hatchling>=1.27", "pip")
    session.run(
        "python",
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(dist),
        STORAGE,
    )
    wheel = next(dist.glob("cacheness_storage-*.whl"))
    session.install(str(wheel), *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run(
        "python",
        "-c",
        "import importlib.util as u, sys;"
        "bad=[m for m in ('pandas','dill','polars') if u.find_spec(m)];"
        "sys.exit(f'storage_only venv must not have {bad}' if bad else 0)",
    )
    session.run(
        "pytest",
        f"{STORAGE}/tests",
        "-m",
        "not integration and not slow",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={"CACHENESS_STORAGE_ONLY": "1"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over both packages (the config lives in the root pyproject.toml)."""
    _install_dev(session, "typecheck")
    session.run("mypy", "-p", "cacheness.storage", "-p", "cacheness")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@nox.session
def services(session: nox.Session) -> None:
    """Tests that need PostgreSQL or an S3 endpoint; starts moto's S3 server on 127.0.0.1."""
    _install_dev(session, "test", "services")
    env = {}
    proc = None
    if "CACHENESS_TEST_S3_ENDPOINT" not in os.environ:
        port = _free_port()
        moto = Path(session.bin) / "moto_server"
        proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    session.error("moto server did not start")
                time.sleep(0.2)
        env["CACHENESS_TEST_S3_ENDPOINT"] = f"http://127.0.0.1:{port}"
    try:
        session.run(
            "pytest", *TEST_DIRS, "-m", "integration and not slow", *session.posargs, env=env
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


@nox.session(default=False)
def slow(session: nox.Session) -> None:
    """The long fault-injection loops (hundreds of SIGKILLs, 2 GB streams, 30 s concurrency runs)."""
    _install_dev(session, "test", "services")
    session.run("pytest", *TEST_DIRS, "-m", "slow", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks beside diskcache, joblib and cachier (pass --quick for a short run)."""
    _install_dev(session, "bench")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(default=False)
def bump(session: nox.Session) -> None:
    """Set one version in both pyprojects and the ~= pin: nox -s bump -- X.Y.Z."""
    if len(session.posargs) != 1:
        session.error("usage: nox -s bump -- X.Y.Z")
    new = session.posargs[0]
    session.run(sys.executable, "scripts/bump_version.py", new, external=True)
