"""Concurrent callers of one missing key: threads of a process, and processes sharing a
cache directory, run the body once; a creator that dies does not block the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cacheness import cached, cacheness

from .conftest import Counter

WORKER = str(Path(__file__).with_name("_decorator_worker.py"))


@pytest.mark.parametrize("backend", ["sqlite", "json", "memory"])
def test_eight_threads_run_the_body_once(tmp_path: Path, backend: str, runs: Counter) -> None:
    with cacheness(cache_dir=tmp_path / "c", metadata_backend=backend) as cache:

        @cached(cache_instance=cache)
        def slow(x: int) -> list[int]:
            runs()
            time.sleep(0.2)
            return [x] * 3

        barrier = threading.Barrier(8)
        results: list[Any] = [None] * 8

        def call(i: int) -> None:
            barrier.wait()
            results[i] = slow(5)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [[5, 5, 5]] * 8
        assert runs.n == 1
        assert slow.cache_info()[:2] == (7, 1)


def test_a_failed_computation_is_not_shared_waiters_retry(sqlite_cache: Any, runs: Counter) -> None:
    @cached(cache_instance=sqlite_cache)
    def flaky(x: int) -> int:
        n = runs()
        time.sleep(0.1)
        if n == 1:
            raise RuntimeError("first attempt fails")
        return x

    barrier = threading.Barrier(4)
    outcomes: list[Any] = [None] * 4

    def call(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = flaky(3)
        except RuntimeError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(isinstance(o, RuntimeError) for o in outcomes) == 1
    assert sorted(o for o in outcomes if isinstance(o, int)) == [3, 3, 3]
    assert runs.n == 2


def test_recursive_call_with_the_same_key_does_not_deadlock(
    sqlite_cache: Any, runs: Counter
) -> None:
    @cached(cache_instance=sqlite_cache)
    def f(x: int, depth: int = 0) -> int:
        runs()
        return x if runs.n > 1 else f(x)

    assert f(4) == 4
    assert runs.n == 2


def _start(cache_dir: Path, runs_file: Path, sleep_s: float, lease_ttl: float, *go: str) -> Any:
    return subprocess.Popen(
        [sys.executable, WORKER, str(cache_dir), str(runs_file), str(sleep_s), str(lease_ttl), *go],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_four_processes_run_the_body_once(tmp_path: Path) -> None:
    cache_dir, runs_file, go = tmp_path / "cache", tmp_path / "runs", tmp_path / "go"
    with cacheness(cache_dir=cache_dir):
        pass  # create the directory once, so the workers only race on the call
    procs = [_start(cache_dir, runs_file, 0.5, 30, str(go)) for _ in range(4)]
    time.sleep(0.3)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert [o["value"] for o in outs] == [42] * 4
    assert len(_lines(runs_file)) == 1
    with cacheness(cache_dir=cache_dir) as cache:
        assert cache.stats()["entries"] == 1


def test_a_killed_creator_does_not_block_the_others(tmp_path: Path) -> None:
    """A holds the lease and renews it while alive; B waits (longer than the lease TTL)
    without computing; A is SIGKILLed mid-compute; B computes once the lease expires."""
    cache_dir, runs_file = tmp_path / "cache", tmp_path / "runs"
    lease_ttl = 0.6
    creator = _start(cache_dir, runs_file, 60, lease_ttl)
    try:
        deadline = time.monotonic() + 30
        while not _lines(runs_file):
            assert creator.poll() is None, creator.communicate()[1]
            assert time.monotonic() < deadline, "the creator never started its body"
            time.sleep(0.01)
        with cacheness(cache_dir=cache_dir) as cache:
            bodies = Counter()

            @cached(cache_instance=cache, key_prefix="stampede", lease_ttl_seconds=lease_ttl)
            def slow(x: int) -> int:
                bodies()
                return x * 2

            result: list[Any] = []
            waiter = threading.Thread(target=lambda: result.append(slow(21)))
            t0 = time.monotonic()
            waiter.start()
            time.sleep(3 * lease_ttl)
            # The creator is alive and renews its lease: the waiter has not taken over.
            assert waiter.is_alive() and bodies.n == 0
            creator.send_signal(signal.SIGKILL)
            creator.wait(10)
            killed_at = time.monotonic()
            waiter.join(30)
            assert result == [42]
            assert bodies.n == 1
            assert time.monotonic() - killed_at < 5 * lease_ttl + 2
            assert time.monotonic() - t0 > 3 * lease_ttl
            assert cache.get(cache_key=slow.cache_key(21)) == 42
        assert len(_lines(runs_file)) == 1  # the creator's body, never finished
    finally:
        if creator.poll() is None:
            os.kill(creator.pid, signal.SIGKILL)
            creator.wait(10)
        if creator.stdout is not None:
            creator.stdout.close()
        if creator.stderr is not None:
            creator.stderr.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_wait_for_its_parents_threads(
    sqlite_cache: Any, runs: Counter
) -> None:
    """A computation running in a parent thread at fork time never finishes in the child;
    the child computes (or reads the parent's result) instead of waiting forever."""
    import warnings

    started = threading.Event()

    @cached(cache_instance=sqlite_cache)
    def slow(x: int) -> int:
        runs()
        started.set()
        time.sleep(0.5)
        return x * 3

    parent = threading.Thread(target=slow, args=(5,))
    parent.start()
    assert started.wait(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: exit 0 only with the right value; SIGALRM ends a hang
        signal.alarm(20)
        code = 1
        try:
            code = 0 if slow(5) == 15 else 1
        finally:
            os._exit(code)
    parent.join(10)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), "the child hung on its parent's computation"
    assert os.WEXITSTATUS(status) == 0


def _leases(cache_dir: Path) -> list[tuple[Any, ...]]:
    import sqlite3

    with sqlite3.connect(cache_dir / "metadata.sqlite") as conn:
        return conn.execute("SELECT name, owner FROM cache_leases").fetchall()


@pytest.mark.parametrize("outcome", ["stored", "refused by condition", "unstorable", "raised"])
def test_no_lease_is_left_behind(tmp_path: Path, outcome: str) -> None:
    """The lease goes away whatever the body did: released in the put's own
    transaction when the result is stored, separately otherwise."""
    cache_dir = tmp_path / "c"
    with cacheness(cache_dir=cache_dir) as cache:

        @cached(cache_instance=cache, condition=lambda r: r != "refuse")
        def body(x: int) -> Any:
            if outcome == "raised":
                raise KeyError(x)
            if outcome == "unstorable":
                return (i for i in range(x))
            return "refuse" if outcome == "refused by condition" else [x]

        for x in range(3):
            if outcome == "raised":
                with pytest.raises(KeyError):
                    body(x)
            else:
                body(x)
            assert _leases(cache_dir) == []
        stored = body.cache_info().currsize
        assert stored == (3 if outcome == "stored" else 0)
        if outcome == "stored":
            assert cache.get(cache_key=body.cache_key(2)) == [2]


def test_a_stale_lease_of_another_owner_is_taken_over(tmp_path: Path) -> None:
    """A lease left by a dead owner blocks only until it expires; then the caller
    computes, stores, and leaves no lease."""
    cache_dir = tmp_path / "c"
    with cacheness(cache_dir=cache_dir) as cache:

        @cached(cache_instance=cache, lease_ttl_seconds=0.3)
        def body(x: int) -> int:
            return x + 1

        name = "cached:" + body.cache_key(1)
        assert cache._acquire_lease(name, 0.3, "dead-owner")
        assert not cache._acquire_lease(name, 0.3, "someone-else")
        t0 = time.monotonic()
        assert body(1) == 2
        assert time.monotonic() - t0 >= 0.2  # it waited for the dead owner's lease
        assert _leases(cache_dir) == []
        assert cache.get(cache_key=body.cache_key(1)) == 2


def test_a_quick_body_runs_without_a_lease_until_it_turns_slow(tmp_path: Path) -> None:
    """After eight computations each under a millisecond, a miss computes at once
    even while another owner holds the key's lease (a lease would cost more than
    the duplicate computation); one slow computation makes misses wait again."""
    from cacheness.decorator._function import _QUICK_RUNS

    cache_dir = tmp_path / "c"
    slow = {"x": -1}
    with cacheness(cache_dir=cache_dir) as cache:

        @cached(cache_instance=cache, lease_ttl_seconds=0.4)
        def body(x: int) -> int:
            if x == slow["x"]:
                time.sleep(0.01)
            return x * 10

        def blocked(x: int) -> float:
            """Seconds ``body(x)`` took while another owner held x's lease."""
            assert cache._acquire_lease("cached:" + body.cache_key(x), 0.4, "other-owner")
            t0 = time.monotonic()
            assert body(x) == x * 10
            return time.monotonic() - t0

        assert blocked(100) >= 0.3  # the first computation: unknown cost, so it waits
        for x in range(_QUICK_RUNS - 1):
            assert body(x) == x * 10
        assert blocked(101) < 0.2  # eight quick computations: no lease any more
        assert cache.get(cache_key=body.cache_key(101)) == 1010
        slow["x"] = 102
        assert body(102) == 1020  # a slow one
        assert blocked(103) >= 0.3  # the lease is back
        assert body.cache_info().misses == _QUICK_RUNS + 3
    # Nothing of ours is left: the other owner's leases expire by themselves.
    assert {owner for _name, owner in _leases(cache_dir)} <= {"other-owner"}


def test_a_quick_coroutine_runs_without_a_lease(tmp_path: Path) -> None:
    import asyncio

    from cacheness.decorator._function import _QUICK_RUNS

    with cacheness(cache_dir=tmp_path / "c") as cache:

        @cached(cache_instance=cache, lease_ttl_seconds=0.4)
        async def body(x: int) -> int:
            return x * 10

        async def blocked(x: int) -> float:
            assert cache._acquire_lease("cached:" + body.cache_key(x), 0.4, "other-owner")
            t0 = time.monotonic()
            assert await body(x) == x * 10
            return time.monotonic() - t0

        async def main() -> None:
            assert await blocked(100) >= 0.3
            for x in range(_QUICK_RUNS - 1):
                assert await body(x) == x * 10
            assert await blocked(101) < 0.2

        asyncio.run(main())
        assert cache.get(cache_key=body.cache_key(101)) == 1010
