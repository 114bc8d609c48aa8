"""The public cache API on the memory, JSON and SQLite backends (DESIGN.md §3, §7)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped, unused-ignore]
import pytest
from cacheness import (
    CacheConfig,
    CacheConfigError,
    CacheError,
    CacheKeyError,
    SecurityConfig,
    UnifiedCache,
    cacheness,
)

MakeCache = Callable[..., UnifiedCache]
Clock = Any  # conftest.Clock: a settable clock with .now and .advance(seconds)


# ------------------------------------------------------------------- basics


def test_put_get_round_trip_and_miss(cache: UnifiedCache) -> None:
    key = cache.put({"a": [1, 2]}, model="xgboost", version="1.0")
    assert isinstance(key, str) and len(key) == 32
    assert cache.get(version="1.0", model="xgboost") == {"a": [1, 2]}
    assert cache.get(model="xgboost", version="2.0") is None
    sentinel = object()
    assert cache.get(model="nope", default=sentinel) is sentinel
    assert cache.get(cache_key=key) == {"a": [1, 2]}


def test_none_is_cached_like_any_value(cache: UnifiedCache) -> None:
    miss = object()
    cache.put(None, x=1)
    assert cache.get(x=1, default=miss) is None
    assert cache.get(x=2, default=miss) is miss


def test_types_round_trip(cache: UnifiedCache) -> None:
    arr = np.arange(10.0)
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    cache.put(arr, what="arr")
    cache.put(df, what="df")
    cache.put(b"raw", what="bytes")
    np.testing.assert_array_equal(cache.get(what="arr"), arr)
    pd.testing.assert_frame_equal(cache.get(what="df"), df)
    assert cache.get(what="bytes") == b"raw"


def test_put_overwrites(cache: UnifiedCache) -> None:
    cache.put(1, x=1)
    cache.put(2, x=1)
    assert cache.get(x=1) == 2
    assert cache.stats()["entries"] == 1


def test_explicit_cache_key_records_key_params(cache: UnifiedCache) -> None:
    cache.put("v", cache_key="fn:mod.f/abc", on={"x": 1}, fn="mod.f")
    assert cache.get(cache_key="fn:mod.f/abc") == "v"
    meta = cache.get_metadata(cache_key="fn:mod.f/abc")
    assert meta is not None and meta["key_params"] == {"x": 1, "fn": "mod.f"}
    assert [e["cache_key"] for e in cache.list_entries(fn="mod.f")] == ["fn:mod.f/abc"]
    with pytest.raises(CacheKeyError):
        cache.put("v", cache_key="")
    with pytest.raises(CacheKeyError):
        cache.put("v", cache_key="a\x00b")


def test_exists(cache: UnifiedCache, clock: Clock) -> None:
    assert not cache.exists(x=1)
    cache.put(1, x=1, ttl_seconds=10)
    assert cache.exists(x=1)
    clock.advance(11)
    assert not cache.exists(x=1)


def test_bad_arguments_are_typed_errors_and_change_nothing(cache: UnifiedCache) -> None:
    with pytest.raises(CacheConfigError):
        cache.put(1, x=1, ttl_seconds=-5)
    with pytest.raises(CacheConfigError):
        cache.put(1, x=1, ttl_seconds="soon")  # type: ignore[arg-type]
    with pytest.raises(CacheError):
        cache.put(1, x=1, metadata={"bad": object()})
    with pytest.raises(CacheConfigError, match="custom_metadata"):
        cache.put(1, x=1, custom_metadata={"t": object()})
    assert cache.stats()["entries"] == 0
    assert cache.get(x=1) is None


# ---------------------------------------------------------------- metadata


def test_get_with_metadata(cache: UnifiedCache, clock: Clock) -> None:
    arr = np.arange(3)
    key = cache.put(
        [1, 2], model="m", arr=arr, ttl_seconds=60, metadata={"acc": 0.9}, description="d"
    )
    cache.get(model="m", arr=arr)
    value, meta = cache.get_with_metadata(model="m", arr=arr)  # type: ignore[misc]
    assert value == [1, 2]
    assert meta["cache_key"] == key
    assert meta["key_params"]["model"] == "m"
    assert meta["key_params"]["arr"]["__type__"] == "numpy.ndarray"
    assert meta["metadata"] == {"acc": 0.9}
    assert meta["description"] == "d"
    assert meta["expires_at"] == datetime.fromtimestamp(clock.now + 60, UTC)
    assert meta["hits"] == 2
    assert meta["size"] > 0 and meta["content_hash"].startswith("xxh3_128:")
    assert isinstance(meta["created_at"], datetime) and meta["created_at"].tzinfo is not None
    assert cache.get_with_metadata(model="other") is None


def test_get_metadata_does_not_load_or_count(cache: UnifiedCache) -> None:
    cache.put("v", x=1, metadata={"k": "v"})
    meta = cache.get_metadata(x=1)
    assert meta is not None and meta["metadata"] == {"k": "v"} and meta["hits"] == 0
    assert cache.get_metadata(x=2) is None
    assert cache.stats()["hits"] == 0


def test_list_entries_filters_on_key_params_and_metadata(cache: UnifiedCache) -> None:
    cache.put(1, model="a", version=1, metadata={"team": "x"})
    cache.put(2, model="a", version=2, metadata={"team": "y"})
    cache.put(3, model="b", version=1, metadata={"team": "x"})
    assert len(cache.list_entries()) == 3
    assert sorted(e["key_params"]["version"] for e in cache.list_entries(model="a")) == [1, 2]
    assert [e["key_params"]["model"] for e in cache.list_entries(team="y")] == ["a"]
    assert len(cache.list_entries(model="a", team="x")) == 1
    assert cache.list_entries(version=True) == []  # 1 and True are different
    assert cache.list_entries(model="zzz") == []


def test_update_data_keeps_metadata_and_expiry(cache: UnifiedCache) -> None:
    cache.put("old", x=1, ttl_seconds=100, metadata={"k": 1})
    before = cache.get_metadata(x=1)
    assert cache.update_data("new", x=1) is True
    assert cache.get(x=1) == "new"
    after = cache.get_metadata(x=1)
    assert after is not None and before is not None
    assert after["metadata"] == {"k": 1} and after["expires_at"] == before["expires_at"]
    assert cache.update_data("new", x=2) is False
    assert cache.get(x=2) is None


def test_update_data_evicts_to_stay_within_the_size_limit(
    make_cache: Callable[..., UnifiedCache],
) -> None:
    """A larger value through update_data evicts like a put (never the updated entry)."""
    import os

    cache = make_cache(max_cache_size_mb=1)
    values = {i: os.urandom(300_000) for i in range(3)}
    for i, v in values.items():
        cache.put(v, k=i)
    cache.get(k=0)  # k=1 is now the least recently used
    bigger = os.urandom(600_000)
    assert cache.update_data(bigger, k=2) is True
    s = cache.stats()
    assert s["size_bytes"] <= 1024 * 1024
    assert (s["entries"], s["evictions"]) == (2, 1)
    assert cache.get(k=2) == bigger
    assert cache.get(k=0) == values[0]
    assert cache.get(k=1) is None


def test_invalidate_and_delete(cache: UnifiedCache) -> None:
    cache.put(1, x=1)
    cache.put(2, x=2)
    assert cache.invalidate(x=1) is True
    assert cache.invalidate(x=1) is False
    assert cache.delete(x=2) is True
    assert cache.get(x=1) is None and cache.get(x=2) is None
    assert cache.stats()["entries"] == 0 and cache.stats()["size_bytes"] == 0


def test_clear(cache: UnifiedCache) -> None:
    for i in range(5):
        cache.put(i, i=i)
    assert cache.clear() == 5
    assert cache.clear_all() == 0
    assert cache.list_entries() == []
    assert cache.stats()["entries"] == 0 and cache.stats()["size_bytes"] == 0
    cache.put(1, i=1)
    assert cache.get(i=1) == 1


def test_delete_prefix_for_the_decorator(cache: UnifiedCache) -> None:
    cache.put(1, cache_key="f1:a")
    cache.put(2, cache_key="f1:b")
    cache.put(3, cache_key="f2:a")
    assert cache._delete_prefix("f1:") == 2
    assert cache.get(cache_key="f2:a") == 3 and cache.get(cache_key="f1:a") is None


# --------------------------------------------------------------------- TTL


def test_ttl_expiry_is_a_removed_miss(cache: UnifiedCache, clock: Clock) -> None:
    cache.put("v", x=1, ttl_seconds=10)
    clock.advance(9.9)
    assert cache.get(x=1) == "v"
    clock.advance(0.2)
    assert cache.get(x=1) is None
    stats = cache.stats()
    assert stats["expired"] == 1 and stats["entries"] == 0 and stats["misses"] == 1
    assert cache.list_entries() == []


def test_default_ttl_from_config_and_none_never_expires(
    make_cache: MakeCache, clock: Clock
) -> None:
    cache = make_cache(default_ttl_seconds=60)
    cache.put("a", x=1)
    cache.put("b", x=2, ttl_seconds=None)
    cache.put("c", x=3, ttl_seconds=600)
    clock.advance(61)
    assert cache.get(x=1) is None
    assert cache.get(x=2) == "b"
    assert cache.get(x=3) == "c"
    clock.advance(10**9)
    assert cache.get(x=2) == "b"


def test_touch_extends(cache: UnifiedCache, clock: Clock) -> None:
    cache.put("v", x=1, ttl_seconds=10)
    clock.advance(8)
    assert cache.touch(ttl_seconds=10, x=1) is True
    clock.advance(8)
    assert cache.get(x=1) == "v"
    assert cache.touch(None, x=1) is True  # never expires
    clock.advance(10**6)
    assert cache.get(x=1) == "v"
    assert cache.touch(x=404) is False


def test_cleanup_expired_sweeps(cache: UnifiedCache, clock: Clock) -> None:
    for i in range(4):
        cache.put(i, i=i, ttl_seconds=10 if i % 2 else None)
    clock.advance(11)
    assert cache.cleanup_expired() == 2
    assert cache.cleanup_expired() == 0
    assert sorted(e["key_params"]["i"] for e in cache.list_entries()) == [0, 2]
    assert cache.stats()["expired"] == 2


# ---------------------------------------------------------------- eviction


@pytest.mark.parametrize(
    ("policy", "survivors"),
    [("lru", {0, 2, 3}), ("lfu", {0, 2, 3}), ("fifo", {1, 2, 3})],
)
def test_eviction_policies(
    make_cache: MakeCache, clock: Clock, policy: str, survivors: set[int]
) -> None:
    cache = make_cache(max_entries=3, eviction_policy=policy)
    for i in range(3):
        cache.put(i, i=i)
        clock.advance(1)
    # Entry 0 becomes the most recently and most frequently used.
    for _ in range(3):
        assert cache.get(i=0) == 0
        clock.advance(1)
    assert cache.get(i=2) == 2
    clock.advance(1)
    cache.put(3, i=3)
    left = {e["key_params"]["i"] for e in cache.list_entries()}
    assert left == survivors
    assert cache.stats()["evictions"] == 1 and cache.stats()["entries"] == 3


def test_size_limit_counts_deduplicated_bytes(make_cache: MakeCache) -> None:
    cache = make_cache(max_cache_size_mb=1, compression="none")
    big = np.random.default_rng(0).random(60_000)  # ~480 KB
    cache.put(big, name="a")
    cache.put(big.copy(), name="b")  # the same content: stored once
    stats = cache.stats()
    assert stats["entries"] == 2
    assert 480_000 <= stats["size_bytes"] < 600_000
    assert cache.stats()["evictions"] == 0
    cache.put(big + 1, name="c")  # new content: ~960 KB < 1 MiB
    cache.put(big + 2, name="d")  # over the limit: the LRU entries go
    assert cache.stats()["size_bytes"] <= 1024 * 1024
    assert cache.get(name="d") is not None
    assert cache.stats()["evictions"] >= 1


def test_new_entry_is_never_its_own_victim(
    make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(max_cache_size_mb=0.1, compression="none")
    cache.put(b"small", name="small")
    big = np.random.default_rng(1).bytes(300_000)
    with caplog.at_level(logging.WARNING, logger="cacheness"):
        cache.put(big, name="big")
    assert cache.get(name="big") == big
    assert cache.get(name="small") is None
    assert "larger than max_cache_size_mb" in caplog.text


def test_default_limit_is_logged_when_it_evicts(
    make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    assert cache.config.max_cache_size_mb == 2048
    cache._limits.max_bytes = 100  # stand-in for 2 GiB of data
    with caplog.at_level(logging.INFO, logger="cacheness"):
        cache.put(b"x" * 80, n=1)
        cache.put(b"y" * 80, n=2)
    assert "the default" in caplog.text and "evicted 1 entry" in caplog.text


def test_dedup_two_keys_one_value(cache: UnifiedCache) -> None:
    value = list(range(10_000))
    cache.put(value, name="a")
    one = cache.stats()["size_bytes"]
    cache.put(value, name="b")
    assert cache.stats()["size_bytes"] == one
    cache.invalidate(name="a")
    assert cache.get(name="b") == value
    assert cache.stats()["size_bytes"] == one
    cache.invalidate(name="b")
    assert cache.stats()["size_bytes"] == 0


# ------------------------------------------------------------------- stats


def test_stats_counts_and_rate(cache: UnifiedCache) -> None:
    cache.put(1, x=1)
    cache.get(x=1)
    cache.get(x=1)
    cache.get(x=2)
    s = cache.stats()
    assert (s["hits"], s["misses"]) == (2, 1)
    assert s["hit_rate"] == pytest.approx(2 / 3)
    assert cache.get_stats() == s
    assert set(s) >= {"hits", "misses", "hit_rate", "entries", "size_bytes", "evictions", "expired"}


def test_stats_survive_reopening(tmp_path: Path, backend: str) -> None:
    if backend == "memory":
        pytest.skip("the memory backend keeps nothing after close")
    opts = {"cache_dir": tmp_path / "c", "metadata_backend": backend}
    with cacheness(**opts) as cache:
        cache.put("v", x=1)
        cache.get(x=1)
        cache.get(x=2)
    with cacheness(**opts) as cache:
        s = cache.stats()
        assert (s["hits"], s["misses"], s["entries"]) == (1, 1, 1)
        assert cache.get(x=1) == "v"


# ------------------------------------------------------------- memory tier


def test_memory_tier_serves_repeats_and_sees_writes(make_cache: MakeCache, clock: Clock) -> None:
    cache = make_cache(memory_cache_entries=2)
    cache.put([1], x=1, ttl_seconds=10)
    first = cache.get(x=1)
    assert cache.get(x=1) is first  # served from memory, the same object
    cache.put([2], x=1, ttl_seconds=10)
    assert cache.get(x=1) == [2]
    clock.advance(11)
    assert cache.get(x=1) is None
    cache.put("a", k="a")
    cache.put("b", k="b")
    cache.put("c", k="c")
    for name in "abc":
        assert cache.get(k=name) == name
    assert len(cache._tier.entries) == 2  # type: ignore[union-attr]
    assert cache.stats()["hits"] == 6


def test_memory_tier_sees_invalidation_by_another_instance(
    make_cache: MakeCache, backend: str
) -> None:
    if backend == "memory":
        pytest.skip("memory caches are not shared")
    a = make_cache(memory_cache_entries=10)
    b = make_cache()
    a.put("v1", x=1)
    assert a.get(x=1) == "v1"
    assert a.get(x=1) == "v1"
    b.put("v2", x=1)
    assert a.get(x=1) == "v2"
    b.invalidate(x=1)
    assert a.get(x=1) is None


def test_memory_tier_after_another_instance_adds_overwrites_and_evicts(
    make_cache: MakeCache, backend: str, clock: Clock
) -> None:
    if backend == "memory":
        pytest.skip("memory caches are not shared")
    a = make_cache(memory_cache_entries=10)
    b = make_cache(max_entries=2)
    a.put(["v1"], x=1)
    first = a.get(x=1)
    assert first == ["v1"]
    gen = a._gen.read()
    clock.advance(1)
    b.put("new", y=1)  # a new key changes no row a's tier may hold
    if backend == "sqlite":
        assert a._gen.read() == gen  # so it costs a's next hit no re-check
    assert a.get(x=1) is first
    clock.advance(1)
    b.put(["v2"], x=1)
    assert a.get(x=1) == ["v2"]
    for y in (2, 3):  # over b's limit: y=1, then x=1 are the least recently used
        clock.advance(1)
        b.put("more", y=y)
    assert (b.exists(y=1), b.exists(x=1), b.exists(y=3)) == (False, False, True)
    assert a.get(x=1) is None
    assert a.get(y=3) == "more"


# -------------------------------------------------------------- lifecycle


def test_close_and_context_manager(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path / "c") as cache:
        cache.put(1, x=1)
    with pytest.raises(CacheError, match="closed"):
        cache.get(x=1)
    cache.close()  # idempotent


def test_default_directory_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHENESS_DIR", str(tmp_path / "envdir"))
    with cacheness() as cache:
        cache.put(1, x=1)
    assert (tmp_path / "envdir" / "metadata.sqlite").is_file()
    monkeypatch.delenv("CACHENESS_DIR")
    monkeypatch.chdir(tmp_path)
    with cacheness() as cache:
        cache.put(1, x=1)
    assert (tmp_path / ".cacheness" / "metadata.sqlite").is_file()


# ---------------------------------------------------------------- signing


def test_bad_signature_is_a_miss_and_removed(tmp_path: Path) -> None:
    opts = {"cache_dir": tmp_path / "c"}
    with cacheness(**opts, security=SecurityConfig(signing_key=b"k" * 32)) as cache:
        cache.put("v", x=1)
        cache.put("w", x=2)
    with cacheness(**opts, security=SecurityConfig(signing_key=b"z" * 32)) as other:
        got = other.get_with_metadata(x=2, strict_verification=False)
        assert got is not None and got[0] == "w" and got[1]["signature_valid"] is False
        assert other.get(x=1) is None
        assert other.get_metadata(x=1) is None  # removed (delete_invalid_signatures=True)


def test_bad_signature_kept_when_asked(tmp_path: Path) -> None:
    opts = {"cache_dir": tmp_path / "c"}
    with cacheness(**opts, security=SecurityConfig(signing_key=b"k" * 32)) as cache:
        cache.put("v", x=1)
    sec = SecurityConfig(signing_key=b"z" * 32, delete_invalid_signatures=False)
    with cacheness(**opts, security=sec) as other:
        assert other.get(x=1) is None
        assert other.get_metadata(x=1) is not None
    with cacheness(**opts, security=SecurityConfig(signing_key=b"k" * 32)) as cache:
        assert cache.get(x=1) == "v"


def test_corrupt_content_is_a_logged_miss(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with cacheness(cache_dir=tmp_path / "c", compression="none") as cache:
        cache.put(b"A" * 100_000, x=1)  # over the inline limit: a blob file to damage
        blobs = [p for p in (tmp_path / "c" / "blobs").rglob("*") if p.is_file()]
        assert len(blobs) == 1
        blobs[0].write_bytes(b"B" * 100_000)
        with caplog.at_level(logging.WARNING, logger="cacheness"):
            assert cache.get(x=1) is None
        assert "could not be read" in caplog.text
        assert cache.stats()["entries"] == 0


# ----------------------------------------------------------------- config


def test_config_object_and_keywords(tmp_path: Path) -> None:
    cfg = CacheConfig(cache_dir=tmp_path / "c", default_ttl_seconds=5, max_entries=10)
    with cacheness(cfg) as cache:
        assert cache.config.max_entries == 10
    with cacheness(cfg, max_entries=3) as cache:
        assert cache.config.max_entries == 3 and cache.config.default_ttl_seconds == 5
    assert UnifiedCache is cacheness


def test_every_config_field_is_a_keyword(tmp_path: Path) -> None:
    import dataclasses

    values = {
        "cache_dir": tmp_path / "c",
        "metadata_backend": "memory",
        "blob_backend": "memory",
        "default_ttl_seconds": 5.0,
        "max_cache_size_mb": 10,
        "max_entries": 7,
        "eviction_policy": "lfu",
        "memory_cache_entries": 3,
        "compression": "zstd",
        "access_flush_seconds": 0.5,
        "security": SecurityConfig(),
    }
    assert set(values) == {f.name for f in dataclasses.fields(CacheConfig)}
    with cacheness(**values) as cache:
        for name, value in values.items():
            assert getattr(cache.config, name) == value


@pytest.mark.parametrize(
    ("kwargs", "hint"),
    [
        ({"max_entires": 5}, "max_entries"),
        ({"default_ttl": 5}, "default_ttl_seconds"),
        ({"cachedir": "x"}, "cache_dir"),
    ],
)
def test_unknown_keywords_name_the_closest(kwargs: dict[str, object], hint: str) -> None:
    with pytest.raises(CacheConfigError, match=f"did you mean '{hint}'"):
        cacheness(**kwargs)
    with pytest.raises(CacheConfigError, match=hint):
        CacheConfig.from_kwargs(kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eviction_policy": "random"},
        {"metadata_backend": "sqlit"},
        {"max_entries": 0},
        {"max_entries": 2.5},
        {"max_cache_size_mb": -1},
        {"default_ttl_seconds": 0},
        {"memory_cache_entries": -1},
        {"memory_cache_entries": True},
        {"security": {"signing_key": b"x"}},
    ],
)
def test_bad_config_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(CacheConfigError):
        CacheConfig(**kwargs)  # type: ignore[arg-type]


def test_security_config_checks_signed_fields() -> None:
    with pytest.raises(CacheConfigError, match="content_hash"):
        SecurityConfig(custom_signed_fields=["nonsense"])
    assert "k" * 32 not in repr(SecurityConfig(signing_key=b"k" * 32))


# ----------------------------------------------------------------- threads


def test_threads_share_one_cache(make_cache: MakeCache) -> None:
    cache = make_cache(memory_cache_entries=50, max_entries=200)
    cache._clock = time.time  # LRU order needs time to move: the oldest entries go first
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(60):
                cache.put((t, i), t=t, i=i)
                assert cache.get(t=t, i=i) == (t, i)
                got = cache.get(t=(t + 1) % 4, i=i)
                assert got is None or got == ((t + 1) % 4, i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    s = cache.stats()
    assert s["entries"] == 200 and s["evictions"] == 40
    assert s["hits"] + s["misses"] == 480


def test_config_keyword_is_accepted(tmp_path: Path) -> None:
    with cacheness(config=CacheConfig(cache_dir=tmp_path / "c", max_entries=4)) as cache:
        assert cache.config.max_entries == 4


def test_required_signatures_never_load_a_bad_entry(tmp_path: Path) -> None:
    opts = {"cache_dir": tmp_path / "c"}
    with cacheness(**opts, security=SecurityConfig(signing_key=b"k" * 32)) as cache:
        cache.put("v", x=1)
    sec = SecurityConfig(signing_key=b"z" * 32, require_signatures=True)
    with cacheness(**opts, security=sec) as other:
        assert other.get(x=1, strict_verification=False) is None
        assert other.get_with_metadata(x=1, strict_verification=False) is None
        other.put("mine", x=2)
        assert other.get(x=2) == "mine"


def test_clear_frees_old_orphans_and_keeps_fresh_ones(tmp_path: Path) -> None:
    """A store entry no index row names (a put killed between its store write and its
    index row) is freed by clear() once it is a minute old; a younger one may be a put
    still in flight, and is left for cleanup_expired()."""
    import time

    with cacheness(cache_dir=tmp_path, metadata_backend="json") as cache:
        cache.put(b"v" * 50_000, k=1)
        orphan = cache._store.put(b"o" * 50_000, key="orphan-store-key")
        assert cache.clear() == 1
        assert cache._store.exists(orphan)  # fresh: left alone
        cache._clock = lambda: time.time() + 120
        cache.put(b"w" * 50_000, k=2)
        assert cache.clear() == 1
        assert not cache._store.exists(orphan)  # two minutes old now: freed
        assert list(cache._store.list()) == []


def test_a_cache_dir_blocked_by_a_file_is_a_config_error(tmp_path: Path) -> None:
    from cacheness import CacheConfigError

    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    for where in (blocker, blocker / "sub"):
        with pytest.raises(CacheConfigError, match="a file stands at that path"):
            cacheness(cache_dir=where)
    assert blocker.read_bytes() == b"not a directory"  # left as it was


def test_an_unserialisable_value_names_the_cache_key_and_stores_nothing(
    make_cache: Callable[..., UnifiedCache],
) -> None:
    from cacheness import CacheSerializationError

    cache = make_cache()
    cache.put("kept", k=2)
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):  # deeper than pickle (and dill) can recurse
        inner.append([])
        inner = inner[0]
    with pytest.raises(CacheSerializationError) as caught:
        cache.put(deep, k=1)
    key = cache.cache_key(k=1)
    assert caught.value.key == key
    assert repr(key) in str(caught.value) and "#" not in str(caught.value)
    assert not cache.exists(k=1)
    assert cache.get(k=2) == "kept"
    assert cache.stats()["entries"] == 1
