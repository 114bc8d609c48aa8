"""Lookup and analytics tables: only the ids not cached (and unexpired) reach the source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from cacheness.sql import SqlCache
from cacheness.storage.errors import CacheConfigError
from sqlalchemy import Float, Integer, String


class UserSource:
    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.known = {i: f"user{i}" for i in range(1, 100)}
        self.fail = False

    def frame(self, ids: list[int]) -> pd.DataFrame:
        found = [i for i in ids if i in self.known]
        return pd.DataFrame({"user_id": found, "name": [self.known[i] for i in found]})


@pytest.fixture
def users_source() -> UserSource:
    return UserSource()


def batch_fetcher(src: UserSource) -> Callable[..., pd.DataFrame]:
    def fetch_users(user_id: list[int]) -> pd.DataFrame:
        src.calls.append(list(user_id))
        if src.fail:
            raise KeyError("lookup service down")
        return src.frame(list(user_id))

    return fetch_users


def single_fetcher(src: UserSource) -> Callable[..., pd.DataFrame]:
    def fetch_user(user_id: int) -> pd.DataFrame:
        src.calls.append(user_id)
        return src.frame([user_id])

    return fetch_user


def test_list_lookup_fetches_missing_ids_in_one_call(
    make_cache: Callable[..., Any], users_source: UserSource
) -> None:
    users: SqlCache = make_cache(
        "for_lookup_table",
        table_name="users",
        primary_keys=["user_id"],
        data_fetcher=batch_fetcher(users_source),
        user_id=Integer,
        name=String(100),
    )
    assert users.batch_fetch is True
    df = users.get_data(user_id=[3, 1, 2])
    assert users_source.calls == [[3, 1, 2]]
    assert df["user_id"].tolist() == [1, 2, 3]
    assert df["name"].tolist() == ["user1", "user2", "user3"]
    assert str(df["user_id"].dtype) == "int64"
    df = users.get_data(user_id=[2, 3, 4, 5])
    assert users_source.calls == [[3, 1, 2], [4, 5]]
    assert df["user_id"].tolist() == [2, 3, 4, 5]
    one = users.get_data(user_id=4)
    assert one["name"].tolist() == ["user4"] and len(users_source.calls) == 2
    stats = users.get_cache_stats()
    assert (stats["misses"], stats["partial_hits"], stats["hits"]) == (1, 1, 1)
    assert stats["rows"] == 5 and len(stats["intervals"]) == 5


def test_ids_the_source_lacks_are_negative_cached_until_ttl(
    make_cache: Callable[..., Any], users_source: UserSource, clock: Any
) -> None:
    users: SqlCache = make_cache(
        "for_lookup_table",
        table_name="users",
        primary_keys=["user_id"],
        data_fetcher=batch_fetcher(users_source),
        ttl_seconds=60,
        user_id=Integer,
        name=String(100),
    )
    assert users.get_data(user_id=[1, 500]).shape == (1, 2)
    assert users.get_data(user_id=[500]).empty
    assert users_source.calls == [[1, 500]]
    clock.advance(61)
    users_source.known[500] = "late"
    df = users.get_data(user_id=[1, 500])
    assert users_source.calls[-1] == [1, 500]
    assert df["name"].tolist() == ["user1", "late"]


def test_unannotated_fetcher_is_called_once_per_id(
    make_cache: Callable[..., Any], users_source: UserSource
) -> None:
    users: SqlCache = make_cache(
        "for_lookup_table",
        table_name="users",
        primary_keys=["user_id"],
        data_fetcher=single_fetcher(users_source),
        user_id=Integer,
        name=String(100),
    )
    assert users.batch_fetch is False
    users.get_data(user_id=[7, 8])
    users.get_data(user_id=[8, 9])
    assert users_source.calls == [7, 8, 9]


def test_lookup_failure_stores_nothing_and_propagates(
    make_cache: Callable[..., Any], users_source: UserSource
) -> None:
    users: SqlCache = make_cache(
        "for_lookup_table",
        table_name="users",
        primary_keys=["user_id"],
        data_fetcher=batch_fetcher(users_source),
        user_id=Integer,
        name=String(100),
    )
    users.get_data(user_id=[1])
    users_source.fail = True
    with pytest.raises(KeyError, match="lookup service down"):
        users.get_data(user_id=[1, 2, 3])
    stats = users.get_cache_stats()
    assert stats["rows"] == 1 and list(stats["intervals"]) == ["1"]
    users_source.fail = False
    users.get_data(user_id=[1, 2, 3])
    assert users_source.calls[-1] == [2, 3]


def test_analytics_table_with_composite_key(make_cache: Callable[..., Any]) -> None:
    calls: list[tuple[list[str], list[str]]] = []

    def revenue(region: list[str], month: list[str]) -> pd.DataFrame:
        calls.append((list(region), list(month)))
        return pd.DataFrame(
            {
                "region": region,
                "month": month,
                "revenue": [
                    len(r) * 10.0 + int(m[-2:]) for r, m in zip(region, month, strict=True)
                ],
            }
        )

    cube: SqlCache = make_cache(
        "for_analytics_table",
        table_name="cube",
        primary_keys=["region", "month"],
        data_fetcher=revenue,
        region=String(10),
        month=String(7),
        revenue=Float,
    )
    assert cube.ttl_seconds == 86400 and cube.batch_fetch is True
    df = cube.get_data(region="EU", month=["2024-01", "2024-02"])
    assert df["revenue"].tolist() == [21.0, 22.0]
    df = cube.get_data(region=["EU", "US"], month="2024-02")
    assert calls == [(["EU", "EU"], ["2024-01", "2024-02"]), (["US"], ["2024-02"])]
    assert df[["region", "month"]].values.tolist() == [["EU", "2024-02"], ["US", "2024-02"]]


def test_lookup_invalidate_by_id(make_cache: Callable[..., Any], users_source: UserSource) -> None:
    users: SqlCache = make_cache(
        "for_lookup_table",
        table_name="users",
        primary_keys=["user_id"],
        data_fetcher=batch_fetcher(users_source),
        user_id=Integer,
        name=String(100),
    )
    users.get_data(user_id=[1, 2, 3])
    assert users.invalidate_cache(user_id=[2]) == 1
    users.get_data(user_id=[1, 2, 3])
    assert users_source.calls == [[1, 2, 3], [2]]


def test_lookup_expiry_cleanup(
    make_cache: Callable[..., Any], users_source: UserSource, clock: Any
) -> None:
    users: SqlCache = make_cache(
        "for_lookup_table",
        table_name="users",
        primary_keys=["user_id"],
        data_fetcher=batch_fetcher(users_source),
        ttl_seconds=10,
        user_id=Integer,
        name=String(100),
    )
    users.get_data(user_id=[1, 2])
    clock.advance(5)
    users.get_data(user_id=[3])
    clock.advance(6)
    assert users.get_cache_stats()["expired_intervals"] == 2
    assert users.cleanup_expired() == 2
    stats = users.get_cache_stats()
    assert stats["rows"] == 1 and list(stats["intervals"]) == ["3"]


def test_lookup_options_are_checked(tmp_path: Any, users_source: UserSource) -> None:
    with pytest.raises(CacheConfigError, match="did you mean ttl_seconds"):
        SqlCache.for_lookup_table(
            f"sqlite:///{tmp_path / 'u.db'}",
            "users",
            primary_keys=["user_id"],
            data_fetcher=batch_fetcher(users_source),
            ttl_second=5,
            user_id=Integer,
        )


def test_many_ids_are_read_fetched_and_invalidated_in_batches(
    make_cache: Callable[..., Any], users_source: UserSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 7 stand in for 10,000 (a statement binds 65,535 values at most on
    # PostgreSQL): 100 ids go to the source in 15 calls, and read back in one frame.
    from cacheness.sql import _request, _rows

    monkeypatch.setattr(_request, "IN_CHUNK", 7)
    monkeypatch.setattr(_rows, "IN_CHUNK", 7)
    users: SqlCache = make_cache(
        "for_lookup_table",
        table_name="users_many",
        primary_keys=["user_id"],
        data_fetcher=batch_fetcher(users_source),
        user_id=Integer,
        name=String(100),
    )
    ids = list(range(100, 0, -1))
    got = users.get_data(user_id=ids)
    assert got["user_id"].tolist() == list(range(1, 100))  # id 100 is not at the source
    assert [len(c) for c in users_source.calls] == [7] * 14 + [2]
    again = users.get_data(user_id=ids)
    assert again.equals(got) and len(users_source.calls) == 15  # every id cached
    assert users.invalidate_cache(user_id=ids[:50]) == 49  # rows deleted (100 had none)
    users.get_data(user_id=ids)
    assert [len(c) for c in users_source.calls[15:]] == [7] * 7 + [1]


@pytest.mark.parametrize("bad", [None, float("nan")])
def test_a_key_without_a_value_is_a_key_error(make_cache: Callable[..., Any], bad: Any) -> None:
    from cacheness.storage.errors import CacheKeyError

    calls: list[Any] = []

    def fetch(symbol: str) -> pd.DataFrame:
        calls.append(symbol)
        return pd.DataFrame({"symbol": [symbol], "v": [1.0]})

    cache = make_cache(
        "for_lookup_table",
        table_name="symbols",
        primary_keys=["symbol"],
        data_fetcher=fetch,
        symbol=String(20),
        v=Float,
    )
    with pytest.raises(CacheKeyError, match="needs a value"):
        cache.get_data(symbol=bad)
    assert calls == [] and cache.get_cache_stats()["rows"] == 0


def test_reopening_a_table_with_other_types_or_keys_is_refused(
    make_cache: Callable[..., Any], users_source: UserSource
) -> None:
    def open_users(**columns: Any) -> Any:
        keys = columns.pop("primary_keys", ["user_id"])
        return make_cache(
            "for_lookup_table",
            table_name="users_typed",
            primary_keys=keys,
            data_fetcher=batch_fetcher(users_source),
            **columns,
        )

    first = open_users(user_id=Integer, name=String(100))
    first.get_data(user_id=[1])
    open_users(user_id=Integer, name=String(100))  # the same: fine
    with pytest.raises(CacheConfigError, match="'name'"):
        open_users(user_id=Integer, name=Float)
    with pytest.raises(CacheConfigError, match="primary key"):
        open_users(user_id=Integer, name=String(100), primary_keys=["user_id", "name"])
    assert first.get_data(user_id=[1])["name"].tolist() == ["user1"]  # nothing changed


def test_long_and_non_ascii_keys_fit_the_ledger(make_cache: Callable[..., Any]) -> None:
    def fetch(a: list[str], b: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"a": a, "b": b, "v": [1.0] * len(a)})

    cache = make_cache(
        "for_lookup_table",
        table_name="pairs",
        primary_keys=["a", "b"],
        data_fetcher=fetch,
        a=String(255),
        b=String(255),
        v=Float,
    )
    a, b = "é" * 255, "x" * 255  # a label of both is longer than 512 characters
    assert cache.get_data(a=[a], b=[b])["v"].tolist() == [1.0]
    assert cache.get_cache_stats()["fetches"] == 1
    assert cache.get_data(a=[a], b=[b])["v"].tolist() == [1.0]
    assert cache.get_cache_stats()["fetches"] == 1  # the ledger found it


@pytest.mark.parametrize("columns", [1, 2])
def test_a_refetch_after_the_ttl_replaces_the_rows_of_its_ids(
    make_cache: Callable[..., Any], clock: Any, columns: int
) -> None:
    rows = {(i, "a"): f"v{i}" for i in range(1, 6)}

    def frame(asked: list[tuple[int, str]]) -> pd.DataFrame:
        found = [k for k in rows if k in asked]
        out: dict[str, list[Any]] = {"id": [k[0] for k in found], "v": [rows[k] for k in found]}
        if columns == 2:
            out["kind"] = [k[1] for k in found]
        return pd.DataFrame(out)

    def by_id(id: list[int]) -> pd.DataFrame:
        return frame([(i, "a") for i in id])

    def by_pair(id: list[int], kind: list[str]) -> pd.DataFrame:
        return frame(list(zip(id, kind, strict=True)))

    extra = {"kind": String(10)} if columns == 2 else {}
    cache = make_cache(
        "for_lookup_table",
        table_name=f"refetch{columns}",
        primary_keys=["id", "kind"][:columns],
        data_fetcher=by_pair if columns == 2 else by_id,
        ttl_seconds=60,
        id=Integer,
        v=String(10),
        **extra,
    )
    ask: dict[str, Any] = {"id": [1, 2, 3, 4, 5]} | ({"kind": ["a"]} if columns == 2 else {})
    assert cache.get_data(**ask)["v"].tolist() == ["v1", "v2", "v3", "v4", "v5"]
    del rows[(2, "a")]
    rows[(3, "a")] = "new"
    clock.advance(61)
    got = cache.get_data(**ask)
    assert got["id"].tolist() == [1, 3, 4, 5] and got["v"].tolist() == ["v1", "new", "v4", "v5"]
    assert cache.get_cache_stats()["rows"] == 4
