"""The decorator's result goes into the memory tier at once; plain puts never alias."""

from __future__ import annotations

from pathlib import Path

from cacheness import cached, cacheness


def test_first_hit_after_a_miss_is_served_from_memory(tmp_path: Path) -> None:
    runs: list[int] = []
    with cacheness(cache_dir=tmp_path, memory_cache_entries=16) as cache:

        @cached(cache_instance=cache)
        def build(n: int) -> list[int]:
            runs.append(n)
            return list(range(n))

        first = build(3)
        again = build(3)
        assert again is first  # the very object: no store read, as with functools.lru_cache
        assert runs == [3]
        assert cache.get(cache_key=build.cache_key(3)) == [0, 1, 2]


def test_another_writer_still_wins_over_the_remembered_result(tmp_path: Path) -> None:
    with (
        cacheness(cache_dir=tmp_path, memory_cache_entries=16) as cache,
        cacheness(cache_dir=tmp_path) as other,
    ):

        @cached(cache_instance=cache)
        def build(n: int) -> list[int]:
            return list(range(n))

        assert build(2) == [0, 1]
        other.put(["replaced"], cache_key=build.cache_key(2))
        assert build(2) == ["replaced"]
        other.invalidate(cache_key=build.cache_key(2))
        assert build(2) == [0, 1]  # recomputed after the invalidation


def test_plain_put_does_not_keep_the_callers_object(tmp_path: Path) -> None:
    with cacheness(cache_dir=tmp_path, memory_cache_entries=16) as cache:
        data = [1]
        cache.put(data, item="x")
        data.append(2)  # the caller keeps using its list
        assert cache.get(item="x") == [1]
