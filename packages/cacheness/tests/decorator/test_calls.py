"""``@cached`` on plain functions: keys from normalised calls, what is stored, the extras."""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cacheness import (
    CacheConfigError,
    CacheInfo,
    CacheKeyError,
    UnifiedCache,
    cache_if,
    cached,
)

from .conftest import Counter

# ----------------------------------------------------------------- the basics


def test_bare_decorator_caches_in_the_given_cache(cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=cache)
    def f(x: int, y: int = 2) -> int:
        runs()
        return x * 10 + y

    assert f(1) == 12
    assert f(1) == 12
    assert runs.n == 1
    assert cache.get(cache_key=f.cache_key(1)) == 12
    assert f.cache_info() == CacheInfo(hits=1, misses=1, maxsize=None, currsize=1)


def test_bare_form_without_parentheses(tmp_path: Path, runs: Counter) -> None:
    from cacheness import reset_cache

    cache = reset_cache(cache_dir=tmp_path / "global")
    try:

        @cached
        def f(x: int) -> int:
            runs()
            return -x

        assert (f(3), f(3), runs.n) == (-3, -3, 1)
        assert f.cache is cache
        assert cache.get(cache_key=f.cache_key(3)) == -3
    finally:
        cache.close()


def test_spellings_of_one_call_share_one_entry(cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=cache)
    def f(x: int, y: int = 2) -> int:
        runs()
        return x + y

    results = [f(1), f(x=1), f(1, 2), f(1, y=2), f(y=2, x=1), f(x=1, y=2)]
    assert results == [3] * 6
    assert runs.n == 1
    assert len({f.cache_key(1), f.cache_key(x=1), f.cache_key(1, 2), f.cache_key(y=2, x=1)}) == 1
    assert f(1, 3) == 4 and runs.n == 2  # a different y is a different call
    assert f.cache_info().currsize == 2


def test_int_float_bool_and_str_arguments_are_different_calls(
    sqlite_cache: UnifiedCache, runs: Counter
) -> None:
    @cached(cache_instance=sqlite_cache)
    def f(x: Any) -> str:
        runs()
        return repr(x)

    assert [f(1), f(1.0), f(True), f("1")] == ["1", "1.0", "True", "'1'"]
    assert runs.n == 4
    assert [f(1), f(1.0), f(True), f("1")] == ["1", "1.0", "True", "'1'"]
    assert runs.n == 4


def test_unhashable_but_keyable_arguments(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=sqlite_cache)
    def total(values: list[int], weights: dict[str, float] | None = None) -> float:
        runs()
        w = weights or {}
        return sum(v * w.get(str(v), 1.0) for v in values)

    assert total([1, 2, 3], {"2": 0.5, "3": 2.0}) == 8.0
    assert total([1, 2, 3], weights={"3": 2.0, "2": 0.5}) == 8.0  # dict order does not matter
    assert runs.n == 1
    assert total([3, 2, 1], {"2": 0.5, "3": 2.0}) == 8.0  # list order does
    assert runs.n == 2


def test_numpy_and_pandas_arguments_are_keyed_by_content(
    sqlite_cache: UnifiedCache, runs: Counter
) -> None:
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")

    @cached(cache_instance=sqlite_cache)
    def stats(arr: Any, frame: Any) -> float:
        runs()
        return float(arr.sum() + frame["a"].sum())

    a = np.arange(1000, dtype="float64")
    df = pd.DataFrame({"a": [1, 2, 3]})
    assert stats(a, df) == stats(a.copy(), df.copy()) == 499506.0
    assert runs.n == 1
    a2 = a.copy()
    a2[17] += 1
    assert stats(a2, df) == 499507.0
    assert runs.n == 2


# ---------------------------------------------------- normalisation exactness


def _reference(sig: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    return list(bound.arguments.values())


def _sig_a(a, b=2, /, c=3, *, d, e=5):  # type: ignore[no-untyped-def]
    return (a, b, c, d, e)


def _sig_b(a, b=2, c=3):  # type: ignore[no-untyped-def]
    return (a, b, c)


def _sig_c(a, *args, b=1, **kwargs):  # type: ignore[no-untyped-def]
    return (a, args, b, kwargs)


def _sig_d(*, a, b=2):  # type: ignore[no-untyped-def]
    return (a, b)


def _sig_e():  # type: ignore[no-untyped-def]
    return 1


@pytest.mark.parametrize("func", [_sig_a, _sig_b, _sig_c, _sig_d, _sig_e])
def test_fast_normalisation_matches_signature_bind_exactly(
    sqlite_cache: UnifiedCache, func: Callable[..., Any]
) -> None:
    """Every call form of up to 5 positional values and any subset of keywords: the
    decorator's binding equals inspect.signature(...).bind, or both refuse the call."""
    import inspect

    sig = inspect.signature(func)
    wrapped = cached(cache_instance=sqlite_cache)(func)
    names = [*sig.parameters, "zz"]
    by_values: dict[str, str] = {}
    checked = 0
    for n_pos in range(6):
        args = tuple(range(100, 100 + n_pos))
        for r in range(len(names) + 1):
            for kw_names in itertools.combinations(names, r):
                kwargs = {k: f"kw-{k}" for k in kw_names}
                try:
                    expected = _reference(sig, args, kwargs)
                except TypeError as exc:
                    with pytest.raises(TypeError) as info:
                        wrapped.cache_key(*args, **kwargs)
                    assert str(info.value) == str(exc)
                    continue
                assert wrapped._bind(args, kwargs) == expected
                key = wrapped.cache_key(*args, **kwargs)
                canon = repr(expected)
                assert by_values.setdefault(canon, key) == key
                checked += 1
    assert checked > 0
    # Different normalised calls never share a key.
    assert len(set(by_values.values())) == len(by_values)


def test_star_args_and_kwargs(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=sqlite_cache)
    def f(a: int, *rest: int, scale: int = 1, **opts: Any) -> tuple[Any, ...]:
        runs()
        return (a, rest, scale, sorted(opts.items()))

    first = f(1, 2, 3, mode="x", level=2)
    assert f(1, 2, 3, level=2, mode="x") == first  # **kwargs order does not matter
    assert f(1, 2, 3, scale=1, mode="x", level=2) == first  # default spelt out
    assert runs.n == 1
    f(1, 2, 3)
    f(1, 2)
    f(1, 2, 3, mode="y", level=2)
    assert runs.n == 4
    with pytest.raises(TypeError):
        f()  # type: ignore[call-arg]  # the same error the function raises


def test_unkeyable_argument_is_a_typed_error_naming_it(
    sqlite_cache: UnifiedCache, runs: Counter
) -> None:
    @cached(cache_instance=sqlite_cache)
    def f(x: int, resource: Any = None) -> int:
        runs()
        return x

    with pytest.raises(
        CacheKeyError, match=r"argument 'resource' of .*f\(\).*ignore=\('resource',\)"
    ):
        f(1, resource=threading.Lock())
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CacheKeyError, match=r"'resource'.*reference cycle"):
        f(1, loop)
    with pytest.raises(CacheKeyError, match="'resource'"):
        f.cache_key(1, lambda: 1)
    assert runs.n == 0  # the body never ran with an unusable key


def test_ignore_leaves_arguments_out_of_the_key(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=sqlite_cache, ignore=("verbose", "conn"))
    def f(x: int, verbose: bool = False, conn: Any = None) -> int:
        runs()
        return x * 2

    assert f(2, verbose=True, conn=threading.Lock()) == 4
    assert f(2) == 4
    assert f(2, False, object()) == 4
    assert runs.n == 1
    assert f(3) == 6 and runs.n == 2


def test_ignore_a_name_passed_through_kwargs(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=sqlite_cache, ignore="progress")
    def f(x: int, **opts: Any) -> int:
        runs()
        return x + opts.get("offset", 0)

    assert f(1, offset=1, progress=True) == f(1, offset=1, progress=False) == 2
    assert runs.n == 1
    assert f(1, offset=2) == 3 and runs.n == 2


def test_ignore_of_an_unknown_parameter_is_refused(sqlite_cache: UnifiedCache) -> None:
    def f(x: int, verbose: bool = False) -> int:
        return x

    with pytest.raises(CacheConfigError, match="did you mean 'verbose'"):
        cached(cache_instance=sqlite_cache, ignore=("verbse",))(f)


def test_key_func_decides_the_key(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=sqlite_cache, key_func=lambda user, *_, **__: user.lower())
    def profile(user: str, request_id: int) -> str:
        runs()
        return user.lower() + "!"

    assert profile("Ann", 1) == profile("ANN", 2) == "ann!"
    assert runs.n == 1
    assert profile.cache_key("ann", 9) == profile.cache_key("Ann", 1)
    assert profile("bob", 1) == "bob!" and runs.n == 2


# ------------------------------------------------------ identity and versions


def _write_module(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(body)


def test_same_name_in_different_modules_never_shares_entries(
    sqlite_cache: UnifiedCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = "def load(x):\n    return '{mod}', x\n"
    for mod in ("dec_mod_a", "dec_mod_b"):
        _write_module(tmp_path, mod, src.format(mod=mod))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    a = cached(cache_instance=sqlite_cache)(importlib.import_module("dec_mod_a").load)
    b = cached(cache_instance=sqlite_cache)(importlib.import_module("dec_mod_b").load)
    try:
        assert a(1) == ("dec_mod_a", 1)
        assert b(1) == ("dec_mod_b", 1)
        assert a.cache_key(1) != b.cache_key(1)
        assert a.cache_key(1).startswith("dec_mod_a.load:")
        assert a.cache_clear() == 1
        assert b(1) == ("dec_mod_b", 1) and b.cache_info().hits == 1  # b's entry is still there
    finally:
        sys.modules.pop("dec_mod_a", None)
        sys.modules.pop("dec_mod_b", None)


def test_two_lambdas_of_one_module_do_not_share(sqlite_cache: UnifiedCache) -> None:
    double = cached(cache_instance=sqlite_cache)(lambda x: x * 2)
    triple = cached(cache_instance=sqlite_cache)(lambda x: x * 3)
    assert (double(5), triple(5)) == (10, 15)


def test_key_prefix_replaces_the_identity(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    def old_name(x: int) -> int:
        runs()
        return x + 1

    def new_name(x: int) -> int:
        runs()
        return x + 1

    a = cached(cache_instance=sqlite_cache, key_prefix="pricing:load")(old_name)
    b = cached(cache_instance=sqlite_cache, key_prefix="pricing:load")(new_name)
    other = cached(cache_instance=sqlite_cache, key_prefix="pricing")(new_name)
    assert a(1) == b(1) == 2  # a function that moved keeps its results
    assert runs.n == 1
    assert a.cache_key(1).startswith("pricing%3Aload:")
    assert other(1) == 2 and runs.n == 2
    assert other.cache_clear() == 1  # "pricing" is not a prefix of "pricing:load"'s keys
    assert a.cache_info().currsize == 1


def _versioned(cache: UnifiedCache, runs: Counter, version: Any) -> Any:
    # The body reads the version off ``runs``, which cannot be keyed: a closure over
    # ``version`` itself would make each version a function of its own.
    runs.label = version

    @cached(cache_instance=cache, version=version)
    def model(x: int) -> str:
        runs()
        return f"v{runs.label}:{x}"

    return model


def test_results_persist_across_decorations_and_version_change_invalidates(
    sqlite_cache: UnifiedCache, runs: Counter
) -> None:
    assert _versioned(sqlite_cache, runs, "1")(7) == "v1:7"
    assert _versioned(sqlite_cache, runs, "1")(7) == "v1:7"  # a new process, in effect
    assert runs.n == 1
    v2 = _versioned(sqlite_cache, runs, "2")
    assert v2(7) == "v2:7" and runs.n == 2
    assert v2.cache_key(7) != _versioned(sqlite_cache, runs, "1").cache_key(7)
    assert v2.cache_clear() == 2  # every version of the function goes


# ------------------------------------------------------- what gets cached


def test_none_is_cached_like_any_result(cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=cache)
    def lookup(x: int) -> None:
        runs()
        return None

    assert lookup(1) is None
    assert lookup(1) is None
    assert lookup(x=1) is None
    assert runs.n == 1
    assert lookup.cache_info().hits == 2


def test_exceptions_are_not_cached(cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=cache)
    def flaky(x: int) -> int:
        if runs() == 1:
            raise ConnectionError("first call fails")
        return x

    with pytest.raises(ConnectionError):
        flaky(1)
    assert flaky.cache_info().currsize == 0
    assert flaky(1) == 1
    assert flaky(1) == 1
    assert runs.n == 2


def test_condition_decides_what_is_stored(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=sqlite_cache, condition=lambda r: r is not None and r >= 0)
    def f(x: int) -> int | None:
        runs()
        return None if x == 0 else x

    assert [f(0), f(0), f(-1), f(-1), f(5), f(5)] == [None, None, -1, -1, 5, 5]
    assert runs.n == 5  # only 5 was stored
    assert f.cache_info().currsize == 1


def test_cache_if_is_cached_with_a_condition(sqlite_cache: UnifiedCache, runs: Counter) -> None:
    @cache_if(lambda r: bool(r), cache_instance=sqlite_cache)
    def search(q: str) -> list[str]:
        runs()
        return [q] if q else []

    assert search("") == [] and search("") == []
    assert search("a") == ["a"] and search("a") == ["a"]
    assert runs.n == 3
    with pytest.raises(CacheConfigError):
        cache_if("not callable")  # type: ignore[arg-type]


def test_ttl_seconds(make_cache: Callable[..., UnifiedCache], clock: Any, runs: Counter) -> None:
    cache = make_cache(default_ttl_seconds=1000)

    @cached(cache_instance=cache, ttl_seconds=10)
    def short(x: int) -> int:
        runs()
        return x

    @cached(cache_instance=cache)
    def default(x: int) -> int:
        runs()
        return x

    @cached(cache_instance=cache, ttl_seconds=None)
    def forever(x: int) -> int:
        runs()
        return x

    for f in (short, default, forever):
        f(1)
    assert runs.n == 3
    clock.advance(11)
    for f in (short, default, forever):
        f(1)
    assert runs.n == 4  # short expired
    clock.advance(1000)
    for f in (short, default, forever):
        f(1)
    assert runs.n == 6  # short (10 s after its re-run) and default expired, forever did not
    meta = cache.get_metadata(cache_key=forever.cache_key(1))
    assert meta is not None and meta["expires_at"] is None


def test_unstorable_result_is_returned_and_not_cached(
    sqlite_cache: UnifiedCache, runs: Counter, caplog: pytest.LogCaptureFixture
) -> None:
    @cached(cache_instance=sqlite_cache)
    def make_iter(x: int) -> Any:
        runs()
        return (i for i in range(x))

    assert list(make_iter(3)) == [0, 1, 2]
    assert "was not cached" in caplog.text
    assert list(make_iter(3)) == [0, 1, 2]
    assert runs.n == 2
    assert make_iter.cache_info().currsize == 0


# --------------------------------------------------------------- the extras


def test_cache_key_is_what_the_cache_accepts(cache: UnifiedCache) -> None:
    @cached(cache_instance=cache)
    def f(x: int, y: str = "a") -> str:
        return y * x

    key = f.cache_key(3)
    assert key == f.cache_key(x=3, y="a")
    assert cache.get(cache_key=key) is None  # not computed yet
    f(3)
    assert cache.get(cache_key=key) == "aaa"
    assert cache.exists(cache_key=key)


def test_invalidate_one_call(cache: UnifiedCache, runs: Counter) -> None:
    @cached(cache_instance=cache)
    def f(x: int) -> int:
        runs()
        return x

    f(1), f(2)
    assert f.invalidate(x=1) is True
    assert f.invalidate(1) is False
    f(1), f(2)
    assert runs.n == 3


def test_cache_clear_removes_this_functions_entries_only(cache: UnifiedCache) -> None:
    @cached(cache_instance=cache)
    def f(x: int) -> int:
        return x

    @cached(cache_instance=cache)
    def f2(x: int) -> int:  # its identity starts with f's
        return x

    for i in range(3):
        f(i)
        f2(i)
    cache.put("mine", name="other")
    assert f.cache_info() == CacheInfo(0, 3, None, 3)
    assert f.cache_clear() == 3
    assert f.cache_info() == CacheInfo(0, 0, None, 0)
    assert f2.cache_info().currsize == 3
    assert cache.get(name="other") == "mine"


def test_cache_info_maxsize_is_the_caches_entry_limit(
    make_cache: Callable[..., UnifiedCache],
) -> None:
    cache = make_cache(max_entries=5)

    @cached(cache_instance=cache)
    def f(x: int) -> int:
        return x

    for i in range(8):
        f(i)
    assert f.cache_info() == CacheInfo(hits=0, misses=8, maxsize=5, currsize=5)


def test_wrapper_looks_like_the_function(sqlite_cache: UnifiedCache) -> None:
    import inspect

    def area(width: float, height: float = 1.0) -> float:
        """The area."""
        return width * height

    f = cached(cache_instance=sqlite_cache)(area)
    assert f.__name__ == "area" and f.__doc__ == "The area."
    assert f.__wrapped__ is area
    assert str(inspect.signature(f)) == str(inspect.signature(area))


def test_generators_are_refused() -> None:
    def gen(n: int) -> Any:
        yield from range(n)

    async def agen(n: int) -> Any:
        yield n

    with pytest.raises(CacheConfigError, match=r"generator function.*list"):
        cached(gen)
    with pytest.raises(CacheConfigError, match="generator function"):
        cached(lease_ttl_seconds=5)(agen)


def test_bad_options_are_refused(sqlite_cache: UnifiedCache) -> None:
    def f(x: int) -> int:
        return x

    with pytest.raises(CacheConfigError, match="did you mean 'ttl_seconds'"):
        cached(ttl_second=5)
    with pytest.raises(CacheConfigError, match="ttl_seconds"):
        cached(ttl_seconds=-1, cache_instance=sqlite_cache)(f)
    with pytest.raises(CacheConfigError, match="lease_ttl_seconds"):
        cached(lease_ttl_seconds=0, cache_instance=sqlite_cache)(f)
    with pytest.raises(CacheConfigError, match="cache_instance"):
        cached(cache_instance=sqlite_cache, cache_dir="x")(f)
    with pytest.raises(CacheConfigError, match="already cached"):
        cached(cached(cache_instance=sqlite_cache)(f))
    with pytest.raises(CacheConfigError, match="key_prefix"):
        cached(key_prefix="", cache_instance=sqlite_cache)(f)


def test_a_closed_cache_instance_says_so(tmp_path: Path) -> None:
    from cacheness import CacheError, cacheness

    cache = cacheness(cache_dir=tmp_path / "c")

    @cached(cache_instance=cache)
    def f(x: int) -> int:
        return x

    assert f(1) == 1
    cache.close()
    with pytest.raises(CacheError, match="closed"):
        f(1)
