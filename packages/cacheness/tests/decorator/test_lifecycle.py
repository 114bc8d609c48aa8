"""Which cache a decorated function uses, and that caches it opens are closed."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
from cacheness import UnifiedCache, cached, cacheness, get_cache, reset_cache
from cacheness.decorator._owned import _owned

from .conftest import Counter


def test_default_is_the_process_wide_cache_and_follows_reset(tmp_path: Path) -> None:
    first = reset_cache(cache_dir=tmp_path / "one")
    try:

        @cached
        def f(x: int) -> int:
            return x + 1

        assert f(1) == 2
        assert f.cache is get_cache() is first
        second = reset_cache(cache_dir=tmp_path / "two")  # closes the first
        assert f(1) == 2
        assert f.cache is second
        assert f.cache_info().currsize == 1
        assert second.get(cache_key=f.cache_key(1)) == 2
    finally:
        get_cache().close()


def test_cache_options_open_one_shared_cache_on_first_call(tmp_path: Path, runs: Counter) -> None:
    before = _owned.open_count()

    def make(n: int) -> Any:
        @cached(cache_dir=tmp_path / "own", memory_cache_entries=16, version=n)
        def f(x: int) -> int:
            runs()
            return x * n

        return f

    funcs = [make(n) for n in range(20)]
    assert _owned.open_count() == before  # decorating opens nothing
    assert [f(2) for f in funcs] == [2 * n for n in range(20)]
    assert _owned.open_count() == before + 1  # one cache for all twenty
    cache = funcs[0].cache
    assert all(f.cache is cache for f in funcs)
    assert cache.config.memory_cache_entries == 16
    del funcs
    gc.collect()
    assert _owned.open_count() == before
    assert cache._closed  # the last user gone: closed


def test_decorating_many_functions_leaks_no_handles(tmp_path: Path) -> None:
    proc = psutil.Process()

    def make(n: int) -> Any:
        @cached(cache_dir=tmp_path / "many", version=n)
        def f(x: int) -> int:
            return x + n

        return f

    warm = make(-1)
    warm(0)  # imports and one-time setup outside the measurement
    del warm
    gc.collect()
    fds = proc.num_fds()
    funcs = [make(n) for n in range(200)]
    for func in funcs:
        func(1)
    assert proc.num_fds() - fds < 10  # one cache's handles, not two hundred
    del funcs, func
    gc.collect()
    assert proc.num_fds() <= fds


def test_own_cache_is_closed_at_interpreter_exit(tmp_path: Path) -> None:
    """Hit counts wait in memory until a flush; that they reached the index shows that
    the cache was closed at exit (so are its connections and its WAL is checkpointed)."""
    script = textwrap.dedent(
        f"""
        from cacheness import cached

        @cached(cache_dir={str(tmp_path / "c")!r}, access_flush_seconds=3600)
        def f(x):
            return x * 2

        assert f(4) == 8 and f(4) == 8 and f(4) == 8
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "c" / "metadata.sqlite-wal").exists()
    with cacheness(cache_dir=tmp_path / "c") as cache:
        s = cache.stats()
        assert (s["hits"], s["misses"], s["entries"]) == (2, 1, 1)


def test_nothing_is_opened_by_decorating_or_computing_keys(tmp_path: Path) -> None:
    before = _owned.open_count()

    @cached(cache_dir=tmp_path / "lazy")
    def f(x: int) -> int:
        return x

    assert f.cache_key(1).startswith(f"{__name__}.")
    assert _owned.open_count() == before
    assert not (tmp_path / "lazy").exists()


# ------------------------------------------------------------------- for_api


class Response:
    def __init__(self, status_code: int, payload: Any) -> None:
        self.status_code = status_code
        self.payload = payload


def test_for_api_preset(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    answers: dict[str, Any] = {
        "ok": {"data": [1, 2]},
        "none": None,
        "error": {"error": "rate limited"},
        "errors": {"errors": ["bad"], "data": None},
        "http500": Response(500, "oops"),
        "http200": Response(200, "fine"),
    }

    @cached.for_api(cache_instance=sqlite_cache)
    def call(endpoint: str) -> Any:
        runs()
        return answers[endpoint]

    for name in answers:
        call(name)
        call(name)
    assert runs.n == 2 + 2 * 4  # only "ok" and "http200" were stored
    meta = sqlite_cache.get_metadata(cache_key=call.cache_key("ok"))
    assert meta is not None
    lifetime = meta["expires_at"].timestamp() - meta["created_at"].timestamp()
    assert lifetime == pytest.approx(21600, abs=5)


def test_for_api_options(tmp_path: Path, runs: Counter) -> None:
    @cached.for_api(ttl_seconds=60, cache_dir=tmp_path / "api", condition=lambda r: True)
    def call(endpoint: str) -> Any:
        runs()
        return None

    assert call("x") is None and call("x") is None
    assert runs.n == 1  # the caller's condition replaced the preset's
    assert call.cache.config.compression == "lz4"
    meta = call.cache.get_metadata(cache_key=call.cache_key("x"))
    assert meta is not None
    assert meta["expires_at"].timestamp() - meta["created_at"].timestamp() == pytest.approx(
        60, abs=5
    )

    @cached.for_api
    def bare(endpoint: str) -> Any:
        return endpoint

    assert bare.cache_key("x").startswith(f"{__name__}.")
    del call
    gc.collect()
