"""What tells two cached functions apart (lambdas on one line, closures over other
values), and a cached method bound to an object as a plain bound method behaves:
pickled, copied, introspected, awaited recursively."""

from __future__ import annotations

import asyncio
import copy
import inspect
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
from cacheness import UnifiedCache, cached, reset_cache

from .conftest import Counter


@pytest.fixture
def global_cache(tmp_path: Any) -> Any:
    """The process-wide cache (the one ``Model``'s methods use), in a folder of its own."""
    cache = reset_cache(cache_dir=tmp_path / "global")
    yield cache
    cache.close()


class Model:
    def __init__(self, k: int) -> None:
        self.k = k

    @cached
    def predict(self, x: int, y: int = 1) -> int:
        "Predict from x."
        return self.k * x + y

    @classmethod
    @cached
    def build(cls, x: int) -> int:
        return x + 1


def test_a_bound_cached_method_pickles_and_copies_as_a_bound_method(global_cache: Any) -> None:
    m = Model(2)
    again = pickle.loads(pickle.dumps(m.predict))
    assert again(5) == 11 and again.__self__.k == 2
    assert copy.copy(m.predict)(3) == 7
    assert pickle.loads(pickle.dumps(Model.build))(1) == 2
    assert m.predict.cache_key(5) == again.cache_key(5)


def test_a_bound_cached_method_reads_as_the_method(global_cache: Any) -> None:
    m = Model(2)
    assert str(inspect.signature(m.predict)) == "(x: 'int', y: 'int' = 1) -> 'int'"
    assert m.predict.__doc__ == "Predict from x."
    assert str(inspect.signature(Model.build)) == "(x: 'int') -> 'int'"


def test_a_pool_maps_a_bound_cached_method(global_cache: Any) -> None:
    # The workers unpickle ``Model(3).predict`` (by attribute lookup on the object)
    # and cache in their own process-wide cache; the results come back the same.
    with ProcessPoolExecutor(2) as pool:
        assert list(pool.map(Model(3).predict, [1, 2, 3])) == [4, 7, 10]
    assert Model(3).predict(2) == 7


def test_an_async_body_awaiting_itself_with_the_same_arguments_finishes(
    cache: UnifiedCache,
) -> None:
    attempts = {"direct": 0, "task": 0}

    @cached(cache_instance=cache)
    async def direct(url: str) -> str:
        attempts["direct"] += 1
        if attempts["direct"] < 3:
            return await direct(url)  # a retry by recursion
        return "ok"

    @cached(cache_instance=cache)
    async def in_a_task(url: str) -> str:
        attempts["task"] += 1
        if attempts["task"] < 3:
            return (await asyncio.gather(in_a_task(url)))[0]
        return "ok"

    assert asyncio.run(asyncio.wait_for(direct("u"), 10)) == "ok"
    assert asyncio.run(asyncio.wait_for(in_a_task("u"), 10)) == "ok"
    assert attempts == {"direct": 3, "task": 3}
    assert asyncio.run(direct("u")) == "ok" and attempts["direct"] == 3  # cached


def test_two_lambdas_on_one_line_keep_their_results_apart(cache: UnifiedCache) -> None:
    ops = {"square": cached(cache_instance=cache)(lambda x: x * x), "cube": cached(cache_instance=cache)(lambda x: x**3)}  # fmt: skip
    assert (ops["square"](3), ops["cube"](3)) == (9, 27)
    assert ops["square"].cache_key(3) != ops["cube"].cache_key(3)


def test_closures_over_other_values_are_other_functions(cache: UnifiedCache, runs: Counter) -> None:
    def make(k: int) -> Any:
        @cached(cache_instance=cache)
        def scale(x: int) -> int:
            runs()  # a closure over an object that cannot be keyed: it does not count
            return x * k

        return scale

    assert make(2)(3) == 6
    assert make(10)(3) == 30
    assert make(2)(3) == 6 and runs.n == 2  # the same closure again: a hit
    assert make(2).cache_key(3) == make(2).cache_key(3)


def test_a_wrapper_that_adds_a_keyword_is_called_through_its_own_signature(
    cache: UnifiedCache, runs: Counter
) -> None:
    import functools

    def with_timeout(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any, timeout: float = 1.0, **kwargs: Any) -> Any:
            return (func(*args, **kwargs), timeout)

        return wrapper

    def passing(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        return wrapper

    @cached(cache_instance=cache)
    @with_timeout
    def fetch(x: int) -> int:
        runs()
        return x * 2

    assert fetch(3, timeout=5) == (6, 5)
    assert fetch(3, timeout=5) == (6, 5) and runs.n == 1
    assert fetch(3) == (6, 1.0) and runs.n == 2  # another timeout, another entry

    @cached(cache_instance=cache)
    @passing
    def double(x: int) -> int:
        runs()
        return x * 2

    assert double(4) == double(x=4) == 8 and runs.n == 3  # the wrapped signature still keys
