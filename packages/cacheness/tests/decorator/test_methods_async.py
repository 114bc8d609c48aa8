"""``@cached`` on methods, class and static methods, and coroutines."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
from typing import Any

import pytest
from cacheness import CacheKeyError, UnifiedCache, cached, cacheness, reset_cache

from .conftest import Counter

RUNS = Counter()  # the classes below are module-level: their instances are keyed by name


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    RUNS.n = 0


@pytest.fixture
def shared(tmp_path: Any) -> Any:
    """The classes below use the process-wide cache, pointed at a fresh folder per test
    (a decorated function follows ``reset_cache``: it re-resolves a closed cache)."""
    cache = reset_cache(cache_dir=tmp_path / "global")
    yield cache
    cache.close()


class Model:
    def __init__(self, scale: float, conn: Any = None) -> None:
        self.scale = scale
        self.conn = conn

    @cached
    def predict(self, x: float) -> float:
        RUNS()
        return self.scale * x

    @cached(ignore=("self",))
    def describe(self, x: float) -> str:
        RUNS()
        return f"x={x}"

    @classmethod
    @cached
    def build(cls, scale: float) -> float:
        RUNS()
        return scale

    @staticmethod
    @cached
    def ping(x: int) -> int:
        RUNS()
        return x

    @cached
    @staticmethod
    def untied(x: int) -> int:
        RUNS()
        return -x

    @cached
    async def aload(self, x: int) -> float:
        RUNS()
        await asyncio.sleep(0)
        return self.scale + x


def test_instance_state_is_part_of_the_key(shared: UnifiedCache) -> None:
    a, b, a_twin = Model(2.0), Model(3.0), Model(2.0)
    assert (a.predict(5), b.predict(5), a_twin.predict(5)) == (10.0, 15.0, 10.0)
    assert RUNS.n == 2  # a and a_twin have the same state
    a.scale = 3.0
    assert a.predict(5) == 15.0 and RUNS.n == 2  # now it equals b
    assert a.predict.cache_key(5) == b.predict.cache_key(5)
    assert a.predict.cache_key(5) == Model.predict.cache_key(a, 5)
    assert a.predict.cache_key(5) != Model(4.0).predict.cache_key(5)
    assert a.predict.invalidate(5) is True
    assert b.predict(5) == 15.0 and RUNS.n == 3
    assert a.predict.cache_info().misses == 3  # forwarded to the function


def test_ignore_self_leaves_the_instance_out(shared: UnifiedCache) -> None:
    a, b = Model(2.0, conn=threading.Lock()), Model(9.0)
    assert a.describe(1) == b.describe(1) == "x=1"
    assert RUNS.n == 1
    # An instance whose state cannot be keyed needs ignore=("self",): said by name.
    with pytest.raises(CacheKeyError, match=r"'self'.*ignore=\('self',\)"):
        Model(1.0, conn=(i for i in range(2))).predict(1)


def test_class_and_static_methods(shared: UnifiedCache) -> None:
    class_key = Model.build.cache_key(2.0)
    assert Model.build(2.0) == Model(1).build(2.0) == 2.0
    assert Model.ping(3) == Model(1).ping(3) == 3
    assert Model.untied(4) == Model(1).untied(4) == -4
    assert RUNS.n == 3
    assert shared.get(cache_key=class_key) == 2.0


@dataclasses.dataclass
class Point:
    x: float
    y: float


def test_dataclass_arguments(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=sqlite_cache)
    def norm(p: Point) -> float:
        runs()
        return float((p.x**2 + p.y**2) ** 0.5)

    assert norm(Point(3, 4)) == norm(Point(3, 4)) == 5.0
    assert runs.n == 1


# ----------------------------------------------------------------- coroutines


def test_async_results_are_cached(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=sqlite_cache)
    async def fetch(x: int) -> dict[str, int]:
        runs()
        await asyncio.sleep(0.001)
        return {"x": x}

    assert asyncio.iscoroutinefunction(fetch)

    async def main() -> list[Any]:
        return [await fetch(1), await fetch(x=1), await fetch(2)]

    assert asyncio.run(main()) == [{"x": 1}, {"x": 1}, {"x": 2}]
    assert runs.n == 2
    assert sqlite_cache.get(cache_key=fetch.cache_key(1)) == {"x": 1}
    assert inspect.iscoroutine(coro := fetch(1))
    assert asyncio.run(coro) == {"x": 1}


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_concurrent_awaits_of_one_key_compute_once(
    tmp_path: Any, backend: str, runs: Counter
) -> None:
    with cacheness(cache_dir=tmp_path / "c", metadata_backend=backend) as cache:

        @cached(cache_instance=cache)
        async def slow(x: int) -> int:
            runs()
            await asyncio.sleep(0.05)
            return x * 2

        async def main() -> list[int]:
            return await asyncio.gather(*[slow(21) for _ in range(10)], slow(1))

        assert asyncio.run(main()) == [42] * 10 + [2]
        assert runs.n == 2
        assert slow.cache_info().hits == 9


def test_async_exceptions_are_not_cached_and_waiters_retry(
    sqlite_cache: UnifiedCache, runs: Counter
) -> None:
    @cached(cache_instance=sqlite_cache)
    async def flaky(x: int) -> int:
        n = runs()
        await asyncio.sleep(0.02)
        if n == 1:
            raise TimeoutError("upstream timed out")
        return x

    async def main() -> list[Any]:
        return await asyncio.gather(*[flaky(7) for _ in range(5)], return_exceptions=True)

    results = asyncio.run(main())
    assert sum(isinstance(r, TimeoutError) for r in results) == 1
    assert [r for r in results if not isinstance(r, BaseException)] == [7] * 4
    assert runs.n == 2  # the failure, then one retry that the other waiters shared
    assert asyncio.run(main()) == [7] * 5
    assert runs.n == 2


def test_cancelled_leader_lets_a_waiter_compute(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=sqlite_cache)
    async def slow(x: int) -> int:
        runs()
        await asyncio.sleep(0.05)
        return x

    async def main() -> int:
        leader = asyncio.create_task(slow(3))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(slow(3))
        await asyncio.sleep(0.01)
        leader.cancel()
        return await follower

    assert asyncio.run(main()) == 3
    assert runs.n == 2


def test_async_method(shared: UnifiedCache) -> None:
    m = Model(1.5)

    async def main() -> list[float]:
        return list(await asyncio.gather(m.aload(1), m.aload(1), Model(1.5).aload(x=1)))

    assert asyncio.run(main()) == [2.5, 2.5, 2.5]
    assert RUNS.n == 1
