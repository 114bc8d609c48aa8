"""Several processes sharing one cache directory: stats, limits, the memory tier, leases."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cacheness import cacheness

WORKER = str(Path(__file__).with_name("_cache_worker.py"))


@pytest.fixture(
    params=["sqlite", "json", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def shared_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":  # the index and the store's metadata in PostgreSQL
        return str(request.getfixturevalue("postgres_url"))
    return str(request.param)


def run(cache_dir: Path, backend: str, action: str, arg: str, *extra: str) -> object:
    done = subprocess.run(
        [sys.executable, WORKER, str(cache_dir), backend, action, arg, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def start(
    cache_dir: Path, backend: str, action: str, arg: str, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, str(cache_dir), backend, action, arg, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_stats_add_up_across_processes(tmp_path: Path, shared_backend: str) -> None:
    procs = [start(tmp_path, shared_backend, "traffic", f"w{i}") for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with cacheness(cache_dir=tmp_path, metadata_backend=shared_backend) as cache:
        s = cache.stats()
        assert (s["hits"], s["misses"], s["entries"]) == (60, 30, 60)
        assert s["hit_rate"] == pytest.approx(60 / 90)
        assert len(cache.list_entries()) == 60


def test_entry_limit_holds_across_processes(tmp_path: Path, shared_backend: str) -> None:
    opts = json.dumps({"max_entries": 25})
    procs = [start(tmp_path, shared_backend, "fill", "30", opts, f"w{i}") for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with cacheness(cache_dir=tmp_path, metadata_backend=shared_backend, max_entries=25) as cache:
        s = cache.stats()
        assert s["entries"] == 25 == len(cache.list_entries())
        assert s["evictions"] == 90 - 25
        # Every surviving entry is readable: no process deleted another's fresh value.
        for e in cache.list_entries():
            assert cache.get(cache_key=e["cache_key"]) == b"x" * 100
        sizes = [e["size"] for e in cache.list_entries()]
        if shared_backend == "sqlite":
            # Small values live in their own metadata rows (not shared): each counts.
            assert s["size_bytes"] == sum(sizes) == 25 * 100
        else:
            # This index counts identical content once.
            assert 0 < s["size_bytes"] < 1000


def test_memory_tier_sees_another_process(tmp_path: Path, shared_backend: str) -> None:
    with cacheness(
        cache_dir=tmp_path, metadata_backend=shared_backend, memory_cache_entries=100
    ) as cache:
        cache.put("mine", x=1)
        assert cache.get(x=1) == "mine"
        assert cache.get(x=1) == "mine"  # now in memory
        run(tmp_path, shared_backend, "put", "theirs")
        assert cache.get(x=1) == "theirs"
        assert cache.get(x=1) == "theirs"
        assert run(tmp_path, shared_backend, "invalidate", "-") is True
        assert cache.get(x=1) is None


def _overwrite_rounds(cache_dir: str, backend: str, rounds: int, go: Any, done: Any) -> None:
    with cacheness(cache_dir=cache_dir, metadata_backend=backend) as cache:
        for i in range(1, rounds + 1):
            while go.value != i:
                pass
            cache.put(i, k="x")
            done.value = i  # after put returned: committed, and the generation published


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_memory_tier_read_during_an_overwrite_never_keeps_the_old_value(
    tmp_path: Path, shared_backend: str
) -> None:
    """A get racing another process's put may return the old value, but once that put
    has returned, every get returns the new one (no later write needed to notice)."""
    import multiprocessing
    import time

    rounds = 40
    ctx = multiprocessing.get_context("fork")
    go, done = ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False)
    with cacheness(
        cache_dir=tmp_path, metadata_backend=shared_backend, memory_cache_entries=10
    ) as cache:
        cache.put(0, k="x")
        writer = ctx.Process(
            target=_overwrite_rounds, args=(str(tmp_path), shared_backend, rounds, go, done)
        )
        writer.start()
        stale = []
        try:
            for i in range(1, rounds + 1):
                go.value = i
                deadline = time.monotonic() + 30
                while done.value != i and time.monotonic() < deadline:
                    cache.get(k="x")  # reads while the writer's transaction runs
                after = [cache.get(k="x"), cache.get(k="x")]
                if after != [i, i]:
                    stale.append((i, after))
        finally:
            writer.join(30)
        assert writer.exitcode == 0
        assert stale == []


def _put_rounds(cache_dir: str, backend: str, n: int, done: Any) -> None:
    with cacheness(cache_dir=cache_dir, metadata_backend=backend, max_cache_size_mb=None) as c:
        for i in range(n):
            c.put(os.urandom(40_000), k=i)  # large enough for a store entry of its own
            done.value = i + 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.parametrize("backend", ["sqlite", "json"])
def test_clear_racing_puts_never_leaves_an_entry_without_its_value(
    tmp_path: Path, backend: str
) -> None:
    """clear() in one process while another puts, for the first half of the puts: an
    entry that survives (put after the last clear read the index) keeps its value;
    none is left unreadable."""
    import multiprocessing

    n = 150
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):  # the race is won only some of the time
        cache_dir = tmp_path / str(attempt)
        done = ctx.Value("i", 0, lock=False)  # "b" (a signed char) wrapped past 127
        writer = ctx.Process(target=_put_rounds, args=(str(cache_dir), backend, n, done))
        with cacheness(cache_dir=cache_dir, metadata_backend=backend, max_cache_size_mb=None) as a:
            writer.start()
            while done.value < n // 2 and writer.is_alive():
                a.clear()
            writer.join(60)
        assert writer.exitcode == 0
        with cacheness(cache_dir=cache_dir, metadata_backend=backend) as cache:
            present = [i for i in range(n) if cache.exists(k=i)]
            assert present  # the puts after the last clear (which may end past halfway)
            assert [i for i in present if cache.get(k=i) is None] == []


def test_leases_are_exclusive_across_processes(tmp_path: Path, shared_backend: str) -> None:
    with cacheness(cache_dir=tmp_path, metadata_backend=shared_backend) as cache:
        assert cache._acquire_lease("compute:k", 60) is True
        assert cache._acquire_lease("compute:k", 60) is True  # renewal by the owner
        assert run(tmp_path, shared_backend, "lease", "compute:k") is False
        assert run(tmp_path, shared_backend, "lease", "other") is True
        assert cache._release_lease("compute:k") is True
        assert run(tmp_path, shared_backend, "lease", "compute:k") is True
        assert cache._acquire_lease("compute:k", 60) is False
        cache._clock = lambda: 10**10  # the other owner's lease has run out
        assert cache._acquire_lease("compute:k", 60) is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_forked_processes_seeded_alike_never_share_a_store_key(tmp_path: Path) -> None:
    # ML code seeds the global random everywhere. Had store keys come from it, the
    # child's and the parent's put would pick the same store key, and the parent's
    # overwrite would free the bytes it had just written.
    big = os.urandom(200_000)  # over the inline limit: a store entry of its own
    cache = cacheness(cache_dir=tmp_path)
    cache.put(b"first", item="x")
    pid = os.fork()
    if pid == 0:  # the child: same memory as the parent, the same random state
        code = 1
        try:
            random.seed(0)
            with cacheness(cache_dir=tmp_path) as child:
                child.put(big[::-1], item="shared")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    random.seed(0)
    cache.put(big, item="shared")
    assert cache.get(item="shared") == big
    cache.close()
    with cacheness(cache_dir=tmp_path) as again:
        assert again.get(item="shared") == big and again.get(item="x") == b"first"
        assert again.stats()["entries"] == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_reads_counted_before_a_fork_are_written_once(tmp_path: Path) -> None:
    """Hits and misses still in memory at a fork are the parent's: the child writes
    only its own, so stats() counts each read once."""
    with cacheness(cache_dir=tmp_path) as cache:
        cache.put(1, k="a")
        for _ in range(10):
            cache.get(k="a")
        cache.get(k="missing")
        pid = os.fork()
        if pid == 0:  # the child: one hit of its own, written when it closes
            code = 0
            try:
                cache.get(k="a")
                cache.close()
            except BaseException:  # report through the exit status
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        s = cache.stats()
        assert (s["hits"], s["misses"]) == (11, 1)
    with cacheness(cache_dir=tmp_path) as cache:
        s = cache.stats()
        assert (s["hits"], s["misses"]) == (11, 1)
