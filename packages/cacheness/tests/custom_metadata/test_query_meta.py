"""list_entries / query_meta over key parameters, user metadata and built-in fields,
on every backend (the parent conftest's ``backend``: sqlite, json, memory, the
SQLAlchemy index on SQLite and on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from cacheness import UnifiedCache

MakeCache = Callable[..., UnifiedCache]


def test_list_entries_and_query_meta(make_cache: MakeCache, clock: object) -> None:
    cache = make_cache()
    cache.put([1], metadata={"team": "ml", "acc": 0.9}, description="first", model="a", v=1)
    cache.put([2], metadata={"team": "ml", "acc": 0.8}, model="a", v=2)
    cache.put(np.arange(3), metadata={"team": "bi"}, model="b", v=1)
    cache.put("short-lived", ttl_seconds=5, metadata={"team": "ml"}, model="c", v=1)
    clock.advance(10)  # type: ignore[attr-defined]

    def params(entries: list[dict[str, object]]) -> list[tuple[object, object]]:
        return sorted((e["key_params"]["model"], e["key_params"]["v"]) for e in entries)  # type: ignore[index]

    # Key parameters and user metadata, equality, expired entries left out.
    assert params(cache.list_entries(team="ml")) == [("a", 1), ("a", 2)]
    assert params(cache.list_entries(model="a", acc=0.8)) == [("a", 2)]
    assert cache.list_entries(acc=0.85) == []
    assert params(cache.query_meta(team="ml", v=1)) == [("a", 1)]
    # 1 and 1.0 and True are different values.
    assert cache.query_meta(v=1.0) == []
    # Built-in fields, which list_entries does not look at.
    assert params(cache.query_meta(data_type="list")) == [("a", 1), ("a", 2)]
    assert params(cache.query_meta(description="first")) == [("a", 1)]
    arrays = cache.query_meta(team="bi")
    assert params(arrays) == [("b", 1)]
    assert params(cache.query_meta(data_type=arrays[0]["data_type"])) == [("b", 1)]
    key = arrays[0]["cache_key"]
    assert [e["cache_key"] for e in cache.query_meta(cache_key=key)] == [key]
    assert len(cache.query_meta()) == 3
