"""Custom metadata (issue 7): typed rows linked to entries, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from cacheness import (
    CacheBackendError,
    CacheConfigError,
    CustomMetadataBase,
    UnifiedCache,
    cacheness,
    custom_metadata_model,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MakeCache = Callable[..., UnifiedCache]
WORKER = str(Path(__file__).with_name("_cm_worker.py"))


def exp(models: ModuleType, model_type: str = "xgboost", accuracy: float = 0.94, **kw: Any) -> Any:
    return models.MLExperiment(model_type=model_type, accuracy=accuracy, **kw)


def all_rows(cache: UnifiedCache, model: type) -> list[tuple[str, Any]]:
    """Every row of ``model``'s table, linked or not (cache_key, id)."""
    with cache.session() as session:
        rows: list[Any] = session.query(model).all()
        return sorted((r.cache_key, r.id) for r in rows)


# ------------------------------------------------------------------ round trip


def test_put_and_query_round_trip(sql_cache: UnifiedCache, models: ModuleType) -> None:
    e1 = exp(models, run_name="a")
    k1 = sql_cache.put([1, 2], custom_metadata={"ml_experiments": e1}, model="xgb", v=1)
    k2 = sql_cache.put([3], custom_metadata={"ml_experiments": exp(models, "lgbm", 0.81)}, v=2)
    # The caller's instance comes back detached, with its id and link filled in.
    assert e1.cache_key == k1 and isinstance(e1.id, int)
    assert sa.inspect(e1).detached

    found = sql_cache.query_custom("ml_experiments", {"model_type": "xgboost"})
    assert [(r.cache_key, r.model_type, r.accuracy, r.run_name) for r in found] == [
        (k1, "xgboost", 0.94, "a")
    ]
    assert sa.inspect(found[0]).detached
    assert sql_cache.get(cache_key=found[0].cache_key) == [1, 2]
    everything = sql_cache.query_custom("ml_experiments")
    assert sorted(r.cache_key for r in everything) == sorted([k1, k2])
    assert sql_cache.query_custom("ml_experiments", {"model_type": "svm"}) == []
    assert sql_cache.query_custom("ml_experiments", {"run_name": None})[0].cache_key == k2

    meta = sql_cache.get_custom_metadata(model="xgb", v=1)
    assert meta is not None and set(meta) == {"ml_experiments"}
    assert meta["ml_experiments"].accuracy == 0.94
    sql_cache.put("plain", v=3)
    assert sql_cache.get_custom_metadata(v=3) == {}
    assert sql_cache.get_custom_metadata(v=99) is None
    assert sql_cache.get_pool_stats()["checked_out"] == 0


def test_several_models_on_one_entry(sql_cache: UnifiedCache, models: ModuleType) -> None:
    key = sql_cache.put(
        "data",
        custom_metadata={
            "ml_experiments": exp(models),
            "datasets": models.Dataset(name="iris", rows=150),
        },
        run=1,
    )
    sql_cache.put("other", custom_metadata={"datasets": models.Dataset(name="x", rows=1)}, run=2)
    meta = sql_cache.get_custom_metadata(run=1)
    assert meta is not None and set(meta) == {"ml_experiments", "datasets"}
    assert meta["datasets"].rows == 150
    assert [r.cache_key for r in sql_cache.query_custom("datasets", {"name": "iris"})] == [key]
    assert sql_cache.invalidate(run=1)
    assert sql_cache.query_custom("ml_experiments") == []
    assert [r.name for r in sql_cache.query_custom("datasets")] == ["x"]


def test_query_session_closes_even_on_exceptions(
    sql_cache: UnifiedCache, models: ModuleType
) -> None:
    sql_cache.put(1, custom_metadata={"ml_experiments": exp(models, accuracy=0.95)}, i=1)
    sql_cache.put(2, custom_metadata={"ml_experiments": exp(models, accuracy=0.5)}, i=2)
    with sql_cache.query_custom_session("ml_experiments") as query:
        assert sql_cache.get_pool_stats()["checked_out"] <= 1
        good = query.filter(models.MLExperiment.accuracy >= 0.9).all()
        assert [r.accuracy for r in good] == [0.95]
    assert sql_cache.get_pool_stats()["checked_out"] == 0

    with (
        pytest.raises(ZeroDivisionError),
        sql_cache.query_custom_session("ml_experiments") as query,
    ):
        assert query.count() == 2
        1 / 0  # noqa: B018
    assert sql_cache.get_pool_stats()["checked_out"] == 0


def test_pool_is_back_to_zero_after_many_queries(
    sql_cache: UnifiedCache, models: ModuleType
) -> None:
    sql_cache.put(1, custom_metadata={"ml_experiments": exp(models)}, i=1)
    for _ in range(1000):
        assert len(sql_cache.query_custom("ml_experiments", {"model_type": "xgboost"})) == 1
    for _ in range(1000):
        with pytest.raises(RuntimeError), sql_cache.query_custom_session("ml_experiments") as q:
            q.filter(models.MLExperiment.accuracy > 0.5).first()
            raise RuntimeError("abort")
    stats = sql_cache.get_pool_stats()
    assert stats["checked_out"] == 0
    assert stats["overflow"] == 0
    assert stats["pool_size"] >= 1


def test_plain_session_rolls_back_unless_committed(
    sql_cache: UnifiedCache, models: ModuleType
) -> None:
    sql_cache.put(1, custom_metadata={"ml_experiments": exp(models)}, i=1)
    with sql_cache.session() as session:
        row = session.query(models.MLExperiment).one()
        row.accuracy = 0.1
        session.flush()
    assert sql_cache.query_custom("ml_experiments")[0].accuracy == 0.94
    with sql_cache.session() as session:
        session.query(models.MLExperiment).one().accuracy = 0.2
        session.commit()
    assert sql_cache.query_custom("ml_experiments")[0].accuracy == 0.2
    assert sql_cache.get_pool_stats()["checked_out"] == 0


# ------------------------------------------------------------------ atomicity


def test_failed_custom_row_rolls_back_the_put(sql_cache: UnifiedCache, models: ModuleType) -> None:
    sql_cache.put("first", custom_metadata={"ml_experiments": exp(models, run_name="r1")}, i=1)
    store_keys = sorted(sql_cache._store.list())
    # run_name is UNIQUE: the custom row fails after the index row was written.
    with pytest.raises(CacheBackendError, match="ml_experiments"):
        sql_cache.put("second", custom_metadata={"ml_experiments": exp(models, run_name="r1")}, i=2)
    assert not sql_cache.exists(i=2)
    assert sql_cache.get(i=2) is None
    assert sorted(sql_cache._store.list()) == store_keys
    assert [r.run_name for r in sql_cache.query_custom("ml_experiments")] == ["r1"]
    assert len(all_rows(sql_cache, models.MLExperiment)) == 1
    assert sql_cache.stats()["entries"] == 1


def test_failed_overwrite_keeps_the_old_entry_and_rows(
    sql_cache: UnifiedCache, models: ModuleType
) -> None:
    key = sql_cache.put("v1", custom_metadata={"ml_experiments": exp(models, run_name="r1")}, i=1)
    sql_cache.put("v2", custom_metadata={"ml_experiments": exp(models, run_name="r2")}, i=2)
    # NOT NULL violated in the second model, after the first model's row went in.
    bad = models.Dataset(name=None, rows=1)
    with pytest.raises(CacheBackendError):
        sql_cache.put(
            "v1-new",
            custom_metadata={"ml_experiments": exp(models, run_name="r3"), "datasets": bad},
            i=1,
        )
    assert sql_cache.get(i=1) == "v1"
    got = sql_cache.get_custom_metadata(i=1)
    assert got is not None and got["ml_experiments"].run_name == "r1"
    assert [r[0] for r in all_rows(sql_cache, models.MLExperiment)].count(key) == 1
    assert all_rows(sql_cache, models.Dataset) == []


# ------------------------------------------------------------------ removal


def test_removals_delete_custom_rows(
    make_sql_cache: MakeCache, models: ModuleType, clock: Any
) -> None:
    cache = make_sql_cache(max_entries=3, eviction_policy="fifo")

    def put(i: int, ttl: float | None = None) -> str:
        clock.advance(0.5)  # distinct creation times: a definite FIFO order
        return cache.put(
            i, ttl_seconds=ttl, custom_metadata={"ml_experiments": exp(models, accuracy=i)}, i=i
        )

    def linked() -> list[float]:
        return sorted(r.accuracy for r in cache.query_custom("ml_experiments"))

    put(1)
    put(2)
    put(3)
    put(4)  # evicts 1 (fifo)
    assert linked() == [2, 3, 4]
    assert cache.invalidate(i=2)
    assert cache.delete(i=3)
    assert linked() == [4]
    put(5, ttl=10)
    put(6, ttl=10)
    clock.advance(11)
    # Expired entries' rows are not returned, even before anything removes them.
    assert linked() == [4]
    assert cache.get(i=5) is None  # an expired get removes the entry
    assert cache.cleanup_expired() == 1  # and the sweep removes 6
    with cache.session() as session:
        assert session.query(models.MLExperiment).count() == 1
    cache.put("overwrite without custom", i=4)
    assert all_rows(cache, models.MLExperiment) == []
    put(7)
    put(8)
    assert cache.clear() == 3
    assert all_rows(cache, models.MLExperiment) == []


def test_overwrite_replaces_rows(sql_cache: UnifiedCache, models: ModuleType) -> None:
    key = sql_cache.put(1, custom_metadata={"ml_experiments": exp(models, "a")}, i=1)
    sql_cache.put(2, custom_metadata={"ml_experiments": exp(models, "b")}, i=1)
    assert [(r.cache_key, r.model_type) for r in sql_cache.query_custom("ml_experiments")] == [
        (key, "b")
    ]
    # update_data keeps the entry, so it keeps the rows.
    assert sql_cache.update_data(3, i=1)
    assert [r.model_type for r in sql_cache.query_custom("ml_experiments")] == ["b"]


def test_prefix_clear_of_the_decorator_deletes_rows(
    sql_cache: UnifiedCache, models: ModuleType
) -> None:
    sql_cache.put(1, cache_key="fn:a", custom_metadata={"ml_experiments": exp(models)})
    sql_cache.put(2, cache_key="other", custom_metadata={"ml_experiments": exp(models)})
    assert sql_cache._delete_prefix("fn:") == 1
    assert [r[0] for r in all_rows(sql_cache, models.MLExperiment)] == ["other"]


def test_cleanup_orphaned_metadata(sql_cache: UnifiedCache, models: ModuleType) -> None:
    key = sql_cache.put(1, custom_metadata={"ml_experiments": exp(models)}, i=1)
    # What an interrupted removal (or a hand edit) leaves: rows without an entry.
    with sql_cache.session() as session:
        session.add_all(
            [
                models.MLExperiment(cache_key="gone-1", model_type="x", accuracy=0.1),
                models.MLExperiment(cache_key="gone-2", model_type="x", accuracy=0.2),
                models.Dataset(cache_key="gone-1", name="d", rows=1),
            ]
        )
        session.commit()
    # Orphans are never returned by queries.
    assert [r.cache_key for r in sql_cache.query_custom("ml_experiments")] == [key]
    assert sql_cache.cleanup_orphaned_metadata() == 3
    assert [k for k, _ in all_rows(sql_cache, models.MLExperiment)] == [key]
    assert all_rows(sql_cache, models.Dataset) == []
    assert sql_cache.cleanup_orphaned_metadata() == 0


# ------------------------------------------------------------------ tables


def test_table_created_on_an_existing_database_keeps_rows(
    tmp_path: Path, sql_backend: str, models: ModuleType
) -> None:
    opts = {"cache_dir": tmp_path / "c", "metadata_backend": sql_backend}
    with cacheness(**opts) as cache:
        cache.put("before", i=0)  # a cache made before any custom metadata existed
    with cacheness(**opts) as cache:
        assert cache.get(i=0) == "before"
        cache.put("with", custom_metadata={"ml_experiments": exp(models)}, i=1)
    with cacheness(**opts) as cache:  # reopening finds the table and its rows
        assert cache.get(i=0) == "before"
        assert [r.model_type for r in cache.query_custom("ml_experiments")] == ["xgboost"]
        cache.put("more", custom_metadata={"ml_experiments": exp(models, "b")}, i=2)
        assert len(cache.query_custom("ml_experiments")) == 2


class Evolving(CustomMetadataBase):
    """Registered only by the test below (its table exists there in an older shape)."""

    __tablename__ = "cm_evolving"
    score: Mapped[float] = mapped_column(sa.Float, nullable=False)
    notes: Mapped[str | None] = mapped_column(sa.String(100))


def test_missing_nullable_column_is_added_without_losing_rows(
    tmp_path: Path, sql_backend: str, registry_snapshot: None
) -> None:
    opts = {"cache_dir": tmp_path / "c", "metadata_backend": sql_backend}
    with cacheness(**opts) as cache:
        key = cache.put("x", i=1)
        with cache.session() as session:  # last release's table: no "notes" column
            old = sa.Table(
                "cm_evolving",
                sa.MetaData(),
                sa.Column(
                    "id",
                    sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                    primary_key=True,
                    autoincrement=True,
                ),
                sa.Column("cache_key", sa.Text, nullable=False),
                sa.Column("score", sa.Float, nullable=False),
            )
            old.create(session.connection())
            session.execute(old.insert().values(cache_key=key, score=0.5))
            session.commit()

    custom_metadata_model("evolving")(Evolving)  # this release's model adds "notes"
    with cacheness(**opts) as cache:
        rows = cache.query_custom("evolving")
        assert [(r.cache_key, r.score, r.notes) for r in rows] == [(key, 0.5, None)]
        cache.put("y", custom_metadata={"evolving": Evolving(score=0.7, notes="n")}, i=2)
        assert sorted(r.score for r in cache.query_custom("evolving")) == [0.5, 0.7]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("backend", ["json", "memory"])
def test_backends_without_sql_say_which_do(
    tmp_path: Path, backend: str, models: ModuleType
) -> None:
    with cacheness(cache_dir=tmp_path, metadata_backend=backend) as cache:
        with pytest.raises(CacheConfigError, match=r"sqlite.*SQLAlchemy URL"):
            cache.put(1, custom_metadata={"ml_experiments": exp(models)}, i=1)
        assert not cache.exists(i=1)
        assert cache._store.list() == []
        for call in (
            lambda: cache.query_custom("ml_experiments"),
            lambda: cache.get_pool_stats(),
            lambda: cache.cleanup_orphaned_metadata(),
        ):
            with pytest.raises(CacheConfigError, match="custom metadata"):
                call()
        with pytest.raises(CacheConfigError), cache.session():
            pass


def test_bad_custom_metadata_is_refused_before_anything_is_stored(
    sql_cache: UnifiedCache, models: ModuleType
) -> None:
    cases: list[tuple[Any, str]] = [
        ({"nope": exp(models)}, "no model is registered as 'nope'"),
        ({"ml_experiments": models.Dataset(name="d", rows=1)}, "MLExperiment instance"),
        ({"ml_experiments": {"model_type": "x"}}, "MLExperiment instance"),
        ([exp(models)], "dict of registered name"),
    ]
    for value, message in cases:
        with pytest.raises(CacheConfigError, match=message):
            sql_cache.put(1, custom_metadata=value, i=1)
    stored = exp(models)
    sql_cache.put(1, custom_metadata={"ml_experiments": stored}, i=2)
    with pytest.raises(CacheConfigError, match="new instance"):
        sql_cache.put(1, custom_metadata={"ml_experiments": stored}, i=3)
    assert [e["key_params"]["i"] for e in sql_cache.list_entries()] == [2]
    with pytest.raises(CacheConfigError, match="not_a_column"):
        sql_cache.query_custom("ml_experiments", {"not_a_column": 1})
    with pytest.raises(CacheConfigError, match="no model is registered"):
        sql_cache.query_custom("nope")
    with (
        pytest.raises(CacheConfigError, match="no model is registered"),
        sql_cache.query_custom_session("nope"),
    ):
        pass


def test_registration_rejects_models_that_cannot_link(registry_snapshot: None) -> None:
    class OtherBase(DeclarativeBase):
        pass

    class Plain(OtherBase):
        __tablename__ = "cm_plain"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(CacheConfigError, match=r"subclass CustomMetadataBase.*cache_key"):
        custom_metadata_model("plain")(Plain)

    class Abstract(CustomMetadataBase):
        __abstract__ = True

    with pytest.raises(CacheConfigError, match="__tablename__"):
        custom_metadata_model("abstract")(Abstract)

    class WrongLink(CustomMetadataBase):
        __tablename__ = "cm_wrong_link"
        cache_key: Mapped[int] = mapped_column(sa.Integer)  # type: ignore[assignment]

    with pytest.raises(CacheConfigError, match="lacks the text column 'cache_key'"):
        custom_metadata_model("wrong_link")(WrongLink)

    with pytest.raises(CacheConfigError, match="decorates a class"):
        custom_metadata_model("fn")(lambda: None)  # type: ignore[type-var]
    for bad in ("", "has space", 3):
        with pytest.raises(CacheConfigError, match="custom metadata name"):
            custom_metadata_model(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ processes


def _run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_processes_write_custom_metadata_at_once(
    tmp_path: Path, sql_backend: str, models: ModuleType
) -> None:
    cache_dir = str(tmp_path / "shared")
    procs = [_run(cache_dir, sql_backend, "put", "15", tag) for tag in ("p1", "p2")]
    keys: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        keys += json.loads(out.strip().splitlines()[-1])
    with cacheness(cache_dir=cache_dir, metadata_backend=sql_backend) as cache:
        rows = cache.query_custom("ml_experiments")
        assert sorted(r.cache_key for r in rows) == sorted(keys)
        assert len(cache.query_custom("datasets")) == 30
        assert {r.model_type for r in rows} == {"p1", "p2"}
        assert cache.stats()["entries"] == 30
        # A process that never imported the models still removes their rows.
        done = subprocess.run(
            [sys.executable, WORKER, cache_dir, sql_backend, "invalidate", keys[0]],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        with cache.session() as session:
            assert session.query(models.MLExperiment).filter_by(cache_key=keys[0]).count() == 0
            assert session.query(models.Dataset).filter_by(cache_key=keys[0]).count() == 0
            assert session.query(models.MLExperiment).count() == 29


def test_plain_use_does_not_load_sqlalchemy(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from cacheness import cacheness\n"
        f"c = cacheness(cache_dir={str(tmp_path)!r})\n"
        "c.put([1], x=1); assert c.get(x=1) == [1]; c.invalidate(x=1); c.close()\n"
        "print('sqlalchemy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_tables_registered_before_in_place_overwrites_get_the_update_trigger(
    tmp_path: Path, models: ModuleType
) -> None:
    root = tmp_path / "c"
    with cacheness(cache_dir=root) as cache:
        key = cache.put(1, custom_metadata={"ml_experiments": exp(models, "a")}, i=1)
    db = root / "metadata.sqlite"
    with sqlite3.connect(db) as conn:
        (trig,) = conn.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE 'cacheness_update_%'"
        ).fetchone()
        conn.execute(f'DROP TRIGGER "{trig}"')  # the trigger set of the previous version
        table = trig[len("cacheness_update_") :]
    # This process never registers the model: the twin comes from opening the index.
    with cacheness(cache_dir=root) as cache:
        assert cache.put("overwrite without custom", i=1) == key
    with sqlite3.connect(db) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] == 0
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert trig in names
