"""The workload groups. Each ``run_<group>(plan, workdir)`` returns result rows.

Every group interleaves systems (each repetition starts with a different
one), gives each measurement a fresh directory under the same base and drops
it afterwards, and checks every value read back against the value written.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import adapters
from benchmarks._collect import Collector, same
from benchmarks._core import MB, PeakRSS, Row, Workdir, dir_bytes, percentile, rotate, status_row

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    quick: bool
    reps: int
    small_ops: int
    array_mb: int
    df_rows: int
    lat_small: int
    lat_big: int
    lat_samples: int
    lat_budget_s: float
    hash_mb: int
    conc_procs: int
    conc_ops: int
    conc_keys: int
    # Wall-clock cap of one timed phase (e.g. all puts of one system in one
    # repetition): a slow system gets fewer operations, never a longer run.
    phase_budget_s: float = 2.0

    @classmethod
    def make(cls, quick: bool, reps: int | None = None) -> Plan:
        if quick:
            return cls(
                quick=True,
                reps=reps or 3,
                small_ops=200,
                array_mb=8,
                df_rows=100_000,
                lat_small=1_000,
                lat_big=50_000,
                lat_samples=300,
                lat_budget_s=5.0,
                hash_mb=32,
                conc_procs=4,
                conc_ops=100,
                conc_keys=100,
                phase_budget_s=0.5,
            )
        return cls(
            quick=False,
            reps=reps or 5,
            small_ops=500,
            array_mb=100,
            df_rows=1_000_000,
            lat_small=1_000,
            lat_big=1_000_000,
            lat_samples=2_000,
            lat_budget_s=75.0,
            hash_mb=100,
            conc_procs=4,
            conc_ops=800,
            conc_keys=500,
            phase_budget_s=1.5,
        )


def _available(
    coll: Collector, workload: str, names: list[str], make: Callable[[str], Any]
) -> list[str]:
    """Systems that import; the others get an "unavailable" row and are left out."""
    ok = []
    for name in names:
        adapter = make(name)
        reason = adapter.unavailable()
        if reason is None:
            ok.append(name)
        else:
            coll.mark(workload, name, adapter.kind, "unavailable", reason)
    return ok


def _us(ns: int) -> float:
    return ns / 1_000.0


# --------------------------------------------------------------------------- small values

SMALL_SYSTEMS = [
    "cacheness",
    "cacheness+mem",
    "cacheness.BlobStore",
    "diskcache.Cache",
    "joblib.Memory",
    "cachier",
    "pickle-file",
]


def small_value(i: int) -> dict[str, Any]:
    """A ~1 KB dict (pickled), distinct per key."""
    return {
        "id": i,
        "name": f"user-{i:08d}",
        "score": i * 0.5,
        "tags": ["alpha", "beta", "gamma", str(i)],
        "payload": "x" * 900,
    }


# Systems take turns every this many operations, so a machine whose speed drifts
# (a shared VM) slows them all alike and the ratios between them hold.
_TURN = 25


def run_small(plan: Plan, work: Workdir) -> list[Row]:
    coll = Collector("small")
    workload = "1 KB dict"
    n = plan.small_ops
    keys = [f"key-{i}" for i in range(n)]
    values = [small_value(i) for i in range(n)]
    systems = _available(coll, workload, SMALL_SYSTEMS, adapters.make_store)
    for rep in range(plan.reps):
        with contextlib.ExitStack() as stack:
            opened: dict[str, tuple[adapters.StoreAdapter, Path]] = {}
            for name in rotate(systems, rep):
                if coll.failed(workload, name):
                    continue
                adapter = adapters.make_store(name)
                try:
                    path = stack.enter_context(work.fresh(name))
                    adapter.open(path)
                except Exception as exc:
                    coll.fail(workload, name, adapter.kind, exc)
                    continue
                stack.callback(adapter.close)
                opened[name] = (adapter, path)
            timings = _small_turns(opened, keys, values, coll, workload, plan.phase_budget_s)
            for name, (puts, gets, again) in timings.items():
                adapter, path = opened[name]
                kind = adapter.kind
                size = dir_bytes(path) / len(puts)
                cut = f"time budget: {len(puts)} of {n} ops" if len(puts) < n else ""
                coll.add(
                    workload, "put", "µs/op", "lower", name, kind, statistics.median(puts), cut
                )
                coll.add(workload, "get", "µs/op", "lower", name, kind, statistics.median(gets))
                coll.add(
                    workload, "get (repeat)", "µs/op", "lower", name, kind, statistics.median(again)
                )
                coll.add(
                    workload, "disk per entry", "bytes", "lower", name, kind, size, adapter.notes
                )
    return coll.rows()


def _small_turns(
    opened: dict[str, tuple[adapters.StoreAdapter, Path]],
    keys: list[str],
    values: list[dict[str, Any]],
    coll: Collector,
    workload: str,
    budget_s: float,
) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Put every key, then get them all twice in a shuffled order, each system
    taking ``_TURN`` operations in turn; a system stops putting when its time
    budget is spent (and reads what it put). Per-op times in µs by system."""
    clock = time.perf_counter_ns
    puts: dict[str, list[float]] = {name: [] for name in opened}
    spent = dict.fromkeys(opened, 0)
    live = list(opened)
    for start in range(0, len(keys), _TURN):
        for name in rotate(live, start // _TURN):
            adapter = opened[name][0]
            times = puts[name]
            try:
                for i in range(start, min(start + _TURN, len(keys))):
                    t0 = clock()
                    adapter.put(keys[i], values[i])
                    took = clock() - t0
                    times.append(_us(took))
                    spent[name] += took
            except Exception as exc:
                coll.fail(workload, name, adapter.kind, exc)
                live.remove(name)
                continue
            if spent[name] > budget_s * 1e9 and len(times) >= 20:
                live.remove(name)
    ok = [name for name in opened if not coll.failed(workload, name)]
    order = list(range(len(keys)))
    random.Random(7).shuffle(order)
    passes: dict[str, list[list[float]]] = {name: [[], []] for name in ok}
    for p in range(2):
        for start in range(0, len(order), _TURN):
            for name in rotate(ok, start // _TURN):
                if coll.failed(workload, name):
                    continue
                adapter = opened[name][0]
                times = passes[name][p]
                try:
                    for i in order[start : start + _TURN]:
                        if i >= len(puts[name]):
                            continue  # not put: its budget ran out first
                        t0 = clock()
                        got = adapter.get(keys[i])
                        times.append(_us(clock() - t0))
                        coll.check(workload, name, same(values[i], got))
                except Exception as exc:
                    coll.fail(workload, name, adapter.kind, exc)
    return {
        name: (puts[name], *passes[name])
        for name in ok
        if not coll.failed(workload, name) and puts[name]
    }


# --------------------------------------------------------------------------- decorator

DECORATOR_SYSTEMS = [
    "cacheness.cached",
    "cacheness.cached+mem",
    "diskcache.memoize",
    "joblib.Memory",
    "cachier",
    "functools.lru_cache",
]


def square(x: int) -> int:
    return x * x


def run_decorator(plan: Plan, work: Workdir) -> list[Row]:
    coll = Collector("decorator")
    workload = "one-int-argument function"
    n = plan.small_ops
    systems = _available(coll, workload, DECORATOR_SYSTEMS, adapters.make_decorator)
    clock = time.perf_counter_ns
    for rep in range(plan.reps):
        for name in rotate(systems, rep):
            if coll.failed(workload, name):
                continue
            adapter = adapters.make_decorator(name)
            misses: list[float] = []
            hits: list[float] = []
            try:
                with work.fresh(name) as path:
                    func = adapter.wrap(square, path)
                    try:
                        deadline = clock() + int(plan.phase_budget_s * 1e9)
                        for x in range(n):
                            t0 = clock()
                            got = func(x)
                            misses.append(_us(clock() - t0))
                            coll.check(workload, name, got == x * x)
                            if t0 > deadline and len(misses) >= 20:
                                break
                        for x in range(len(misses)):
                            t0 = clock()
                            got = func(x)
                            hits.append(_us(clock() - t0))
                            coll.check(workload, name, got == x * x)
                    finally:
                        adapter.close()
            except Exception as exc:
                coll.fail(workload, name, adapter.kind, exc)
                continue
            kind = adapter.kind
            cut = f"time budget: {len(misses)} of {n} calls" if len(misses) < n else ""
            coll.add(workload, "hit", "µs/call", "lower", name, kind, statistics.median(hits), cut)
            coll.add(
                workload,
                "miss (key + store)",
                "µs/call",
                "lower",
                name,
                kind,
                statistics.median(misses),
                adapter.notes,
            )
    return coll.rows()


# --------------------------------------------------------------------------- 100 MB arrays

LARGE_SYSTEMS = [
    "cacheness",
    "cacheness.BlobStore",
    "diskcache.Cache",
    "joblib.Memory",
    "cachier",
    "pickle-file",
]


def make_arrays(mb: int) -> dict[str, Any]:
    import numpy as np

    n = mb * 2**20 // 8
    return {
        f"float64 {mb} MiB random normal": np.random.default_rng(0).standard_normal(n),
        f"float64 {mb} MiB np.arange": np.arange(n, dtype=np.float64),
    }


def run_arrays(plan: Plan, work: Workdir) -> list[Row]:
    coll = Collector("arrays")
    arrays = make_arrays(plan.array_mb)
    note = "" if not plan.quick else "quick mode: smaller array than the full run's 100 MiB"
    for workload, arr in arrays.items():
        _large_value(plan, work, coll, workload, arr, throughput=True, note=note)
    del arrays
    gc.collect()
    return coll.rows()


def _large_value(
    plan: Plan,
    work: Workdir,
    coll: Collector,
    workload: str,
    value: Any,
    *,
    throughput: bool,
    note: str,
) -> None:
    nbytes = _nbytes(value)
    systems = _available(coll, workload, LARGE_SYSTEMS, adapters.make_store)
    for rep in range(plan.reps):
        for name in rotate(systems, rep):
            if coll.failed(workload, name):
                continue
            adapter = adapters.make_store(name)
            try:
                with work.fresh(name) as path:
                    gc.collect()
                    adapter.open(path)
                    try:
                        with PeakRSS() as put_mem:
                            t0 = time.perf_counter()
                            adapter.put("value", value)
                            t_put = time.perf_counter() - t0
                    finally:
                        adapter.close()
                    size = dir_bytes(path)
                    # Reopen: the get reads what is on disk (through the page cache),
                    # never an object some layer kept in memory from the put.
                    adapter.open(path)
                    try:
                        gc.collect()
                        _settle_memory(2 * nbytes)
                        with PeakRSS() as get_mem:
                            t0 = time.perf_counter()
                            got = adapter.get("value")
                            t_get = time.perf_counter() - t0
                    finally:
                        adapter.close()
                    coll.check(workload, name, same(value, got))
                    del got
            except Exception as exc:
                coll.fail(workload, name, adapter.kind, exc)
                continue
            kind = adapter.kind
            if throughput:
                coll.add(workload, "put", "MB/s", "higher", name, kind, nbytes / MB / t_put)
                coll.add(workload, "get", "MB/s", "higher", name, kind, nbytes / MB / t_get)
            else:
                coll.add(workload, "put", "s", "lower", name, kind, t_put)
                coll.add(workload, "get", "s", "lower", name, kind, t_get)
            coll.add(workload, "on disk", "MB", "lower", name, kind, size / MB, note)
            for label, mem in (("put", put_mem), ("get", get_mem)):
                coll.add(
                    workload,
                    f"{label} peak RSS growth",
                    "MB",
                    "lower",
                    name,
                    kind,
                    mem.growth_mb,
                    adapter.notes,
                )


def _settle_memory(nbytes: int) -> None:
    """Fault in and free a NumPy buffer of ``nbytes`` before a timed read (twice the
    value: a compressed read holds the compressed and the decoded bytes at once).

    NumPy asks the kernel for huge pages on large arrays; with THP ``defrag=madvise``
    the first such buffer after the page cache has filled memory costs ~0.2 s per
    100 MB of compaction. Without this, that cost lands on whichever system happens
    to read first after a put, not on the one being measured.
    """
    try:
        import numpy as np
    except ImportError:
        return
    np.ones(nbytes, dtype=np.uint8)


def _nbytes(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    return int(value.memory_usage(deep=True).sum())


# --------------------------------------------------------------------------- DataFrame


def make_frame(rows: int) -> Any:
    import numpy as np
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    rng = np.random.default_rng(1)
    cities = np.array(["Berlin", "Lagos", "Lima", "Osaka", "Perth", "Quito", "Rome", "Oslo"])
    return pd.DataFrame(
        {
            "f1": rng.standard_normal(rows),
            "f2": rng.uniform(0, 1000, rows),
            "f3": np.round(rng.standard_normal(rows) * 100, 2),
            "i1": rng.integers(0, 1_000_000, rows, dtype=np.int64),
            "i2": rng.integers(0, 100, rows, dtype=np.int32),
            "cat1": pd.Categorical(rng.choice(cities, rows)),
            "cat2": pd.Categorical(rng.choice(["low", "mid", "high"], rows), ordered=False),
            "s1": pd.Series(rng.integers(0, 10**9, rows)).map("id-{:09d}".format),
            "s2": pd.Series(rng.choice(cities, rows)).str.lower() + "-x",
            "ts": pd.Timestamp("2024-01-01")
            + pd.to_timedelta(rng.integers(0, 86_400 * 365, rows), unit="s"),
        }
    )


def run_dataframe(plan: Plan, work: Workdir) -> list[Row]:
    coll = Collector("dataframe")
    frame = make_frame(plan.df_rows)
    workload = f"DataFrame {plan.df_rows:,} x 10 mixed"
    note = "" if not plan.quick else "quick mode: fewer rows than the full run's 1,000,000"
    _large_value(plan, work, coll, workload, frame, throughput=False, note=note)
    _frame_references(plan, work, coll, workload, frame)
    return coll.rows()


def _frame_references(
    plan: Plan, work: Workdir, coll: Collector, workload: str, frame: Any
) -> None:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    formats: dict[str, tuple[Callable[[Any, str], None], Callable[[str], Any]]] = {
        "to_parquet (pyarrow)": (lambda df, p: df.to_parquet(p), pd.read_parquet),
        "to_pickle": (lambda df, p: df.to_pickle(p), pd.read_pickle),
    }
    for rep in range(plan.reps):
        for name in rotate(list(formats), rep):
            write, read = formats[name]
            try:
                with work.fresh(name) as path:
                    target = str(path / "frame")
                    t0 = time.perf_counter()
                    write(frame, target)
                    t_put = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    got = read(target)
                    t_get = time.perf_counter() - t0
                    size = dir_bytes(path)
                    coll.check(workload, name, same(frame, got))
            except Exception as exc:
                coll.fail(workload, name, "reference", exc)
                continue
            coll.add(workload, "put", "s", "lower", name, "reference", t_put)
            coll.add(workload, "get", "s", "lower", name, "reference", t_get)
            coll.add(workload, "on disk", "MB", "lower", name, "reference", size / MB)


# --------------------------------------------------------------------------- key hashing

HASH_SYSTEMS = ["cacheness.cached", "diskcache.memoize", "joblib.Memory", "cachier"]


def array_total(a: Any) -> float:
    return float(a.sum())


def run_hashing(plan: Plan, work: Workdir) -> list[Row]:
    import numpy as np
    import xxhash

    coll = Collector("hashing")
    arr = np.random.default_rng(2).standard_normal(plan.hash_mb * 2**20 // 8)
    expected = float(arr.sum())
    wl_key = f"key of a {plan.hash_mb} MiB array argument"
    wl_hit = f"hit of f(array) with a {plan.hash_mb} MiB argument"
    systems = _available(coll, wl_key, HASH_SYSTEMS, adapters.make_decorator)
    for name in HASH_SYSTEMS:
        if name not in systems:
            adapter = adapters.make_decorator(name)
            coll.mark(wl_hit, name, adapter.kind, "unavailable", adapter.unavailable() or "")
    key_notes = {
        "cacheness.cached": "f.cache_key(arr)",
        "diskcache.memoize": "pickle of the key tuple (Disk.put), paid by every call",
        "joblib.Memory": "joblib.hash",
        "cachier": "default hash_func: pickle + sha256",
    }
    for rep in range(plan.reps):
        for name in rotate(systems, rep):
            if coll.failed(wl_key, name):
                continue
            adapter = adapters.make_decorator(name)
            try:
                with work.fresh(name) as path:
                    func = adapter.wrap(array_total, path)
                    try:
                        t0 = time.perf_counter()
                        adapter.key_of(func, arr)
                        t_key = time.perf_counter() - t0
                        first = func(arr)
                        t0 = time.perf_counter()
                        got = func(arr)
                        t_hit = time.perf_counter() - t0
                    finally:
                        adapter.close()
                    coll.check(wl_key, name, first == expected)
                    coll.check(wl_hit, name, got == expected)
            except Exception as exc:
                coll.fail(wl_key, name, adapter.kind, exc)
                coll.fail(wl_hit, name, adapter.kind, exc)
                continue
            coll.add(wl_key, "key", "ms", "lower", name, adapter.kind, t_key * 1e3, key_notes[name])
            coll.add(wl_hit, "hit", "ms", "lower", name, adapter.kind, t_hit * 1e3)
        t0 = time.perf_counter()
        xxhash.xxh3_128(arr.data.cast("B")).hexdigest()
        coll.add(
            wl_key,
            "key",
            "ms",
            "lower",
            "xxh3_128(buffer)",
            "reference",
            (time.perf_counter() - t0) * 1e3,
            "floor: one pass over the memory",
        )
    return coll.rows()


# --------------------------------------------------------------------------- latency vs size

LATENCY_SYSTEMS = ["cacheness", "cacheness.BlobStore", "diskcache.Cache"]
LATENCY_SKIPPED = {
    "joblib.Memory": "peer",
    "cachier": "peer",
}


def run_latency(plan: Plan, work: Workdir) -> list[Row]:
    coll = Collector("latency")
    small, big = plan.lat_small, plan.lat_big
    wl_small = f"get latency at {small:,} entries"
    wl_big = f"get latency at {big:,} entries"
    wl_build = f"build a {big:,}-entry store"
    wl_growth = f"p50 growth {small:,} -> {big:,} entries"
    note = "" if not plan.quick else "quick mode: 50,000 entries instead of 1,000,000"
    systems = _available(coll, wl_small, LATENCY_SYSTEMS, adapters.make_store)
    for name, kind in LATENCY_SKIPPED.items():
        for wl in (wl_small, wl_big):
            coll.mark(wl, name, kind, "skipped", "one file or directory per entry: not built")
    # Two stores per system, measured in the same turns: the p50 growth compares
    # gets made side by side, not minutes apart on a machine whose speed drifts.
    stores: dict[tuple[str, str], tuple[adapters.StoreAdapter, int, str]] = {}
    with _ExitDirs(work) as dirs:
        try:
            for name in systems:
                for wl in (wl_small, wl_big):
                    adapter = adapters.make_store(name)
                    try:
                        adapter.open(dirs.make(f"{name} {len(stores)}"))
                        _fill(adapter, 0, small, budget=None)
                    except Exception as exc:
                        coll.fail(wl, name, adapter.kind, exc)
                        adapter.close()
                        continue
                    stores[(wl, name)] = (adapter, small, "")
            for (wl, name), (adapter, _n, _note) in list(stores.items()):
                if wl != wl_big:
                    continue
                try:
                    t0 = time.perf_counter()
                    count = _fill(adapter, small, big, budget=plan.lat_budget_s)
                    elapsed = time.perf_counter() - t0
                except Exception as exc:
                    coll.fail(wl_build, name, adapter.kind, exc)
                    coll.fail(wl_big, name, adapter.kind, exc)
                    continue
                short = "" if count >= big else f"build budget hit: measured at {count:,} entries"
                stores[(wl, name)] = (adapter, count, "; ".join(x for x in (note, short) if x))
                added = count - small
                how = "bulk (transact)" if hasattr(adapter, "put_many") else "one put per entry"
                reached = "" if count >= big else f"budget hit: {count:,} entries"
                coll.add(wl_build, "build", "s", "lower", name, adapter.kind, elapsed, how)
                coll.add(
                    wl_build,
                    "build per entry",
                    "µs",
                    "lower",
                    name,
                    adapter.kind,
                    elapsed / max(added, 1) * 1e6,
                    reached,
                )
            _read_once(coll, stores, wl_big)
            p50s = _measure_latency(plan, coll, stores)
            for name in systems:
                small_p50s, big_p50s = p50s.get((wl_small, name)), p50s.get((wl_big, name))
                if not small_p50s or not big_p50s:
                    continue
                # One ratio per repetition, of the two sizes measured in the same turns.
                for small_p50, big_p50 in zip(small_p50s, big_p50s, strict=False):
                    coll.add(
                        wl_growth,
                        "p50 ratio",
                        "x",
                        "lower",
                        name,
                        stores[(wl_big, name)][0].kind,
                        big_p50 / small_p50,
                        note,
                    )
        finally:
            # Close before the directories go: never delete files a store still holds.
            for adapter, _n, _note in stores.values():
                adapter.close()
    return coll.rows()


def latency_value(i: int) -> dict[str, int]:
    return {"i": i}


def _fill(adapter: adapters.StoreAdapter, start: int, stop: int, budget: float | None) -> int:
    """Put entries start..stop-1; stop early when the time budget runs out."""
    t0 = time.perf_counter()
    batch = 2_000
    put_many = getattr(adapter, "put_many", None)
    i = start
    while i < stop:
        end = min(stop, i + batch)
        if put_many is not None:
            put_many([(f"k{j}", latency_value(j)) for j in range(i, end)])
        else:
            for j in range(i, end):
                adapter.put(f"k{j}", latency_value(j))
        i = end
        if budget is not None and time.perf_counter() - t0 > budget:
            logger.warning("%s: build budget of %.0f s hit at %d entries", adapter.name, budget, i)
            break
    return i


def _read_once(
    coll: Collector,
    stores: dict[tuple[str, str], tuple[adapters.StoreAdapter, int, str]],
    wl_big: str,
) -> None:
    """Get every entry of every store once before the timed turns, which then measure
    a process that has read its cache before (steady state). A process's first get
    of an entry costs more: the page fault of each page it first touches (SQLite
    maps its file) and, for diskcache, reads past its page cache. That cost is
    reported on its own, as the 'first get' rows of the big stores."""
    clock = time.perf_counter_ns
    for (workload, name), (adapter, count, note) in stores.items():
        if coll.failed(workload, name):
            continue
        times = []
        try:
            for i in range(count):
                t0 = clock()
                got = adapter.get(f"k{i}")
                times.append(_us(clock() - t0))
                coll.check(workload, name, got == latency_value(i))
            adapter.settle()
        except Exception as exc:
            coll.fail(workload, name, adapter.kind, exc)
            continue
        if workload == wl_big:
            for metric, value in (
                ("first get p50", percentile(times, 50)),
                ("first get mean", statistics.mean(times)),
            ):
                coll.add(workload, metric, "µs", "lower", name, adapter.kind, value, note)


def _measure_latency(
    plan: Plan,
    coll: Collector,
    stores: dict[tuple[str, str], tuple[adapters.StoreAdapter, int, str]],
) -> dict[tuple[str, str], list[float]]:
    """Random gets from every store, ``_TURN`` at a time in turn; p50/p99/mean rows
    per repetition, and the p50 of each repetition by (workload, system)."""
    clock = time.perf_counter_ns
    p50s: dict[tuple[str, str], list[float]] = {k: [] for k in stores}
    for rep in range(plan.reps):
        rngs = {k: random.Random(rep * 1000 + 11) for k in stores}
        times: dict[tuple[str, str], list[float]] = {k: [] for k in stores}
        for start in range(0, plan.lat_samples, _TURN):
            for k in rotate(list(stores), start // _TURN + rep):
                workload, name = k
                if coll.failed(workload, name):
                    continue
                adapter, count, _note = stores[k]
                rng, got_times = rngs[k], times[k]
                try:
                    for _ in range(min(_TURN, plan.lat_samples - start)):
                        i = rng.randrange(count)
                        t0 = clock()
                        got = adapter.get(f"k{i}")
                        got_times.append(_us(clock() - t0))
                        coll.check(workload, name, got == latency_value(i))
                except Exception as exc:
                    coll.fail(workload, name, adapter.kind, exc)
        for k, got_times in times.items():
            workload, name = k
            if coll.failed(workload, name) or not got_times:
                continue
            adapter, _count, note = stores[k]
            for metric, value in (
                ("get p50", percentile(got_times, 50)),
                ("get p99", percentile(got_times, 99)),
                # The mean carries what the percentiles leave out: the occasional get
                # that writes the reads counted in memory (one row per distinct key).
                ("get mean", statistics.mean(got_times)),
            ):
                coll.add(workload, metric, "µs", "lower", name, adapter.kind, value, note)
            p50s[k].append(percentile(got_times, 50))
    return p50s


class _ExitDirs:
    """Several directories alive at once (one big store per system), all dropped at exit."""

    def __init__(self, work: Workdir) -> None:
        self.work = work
        self._stack: list[Any] = []

    def make(self, label: str) -> Any:
        ctx = self.work.fresh(label, defer_delete=True)
        path = ctx.__enter__()
        self._stack.append(ctx)
        return path

    def __enter__(self) -> _ExitDirs:
        return self

    def __exit__(self, *exc: object) -> None:
        while self._stack:
            self._stack.pop().__exit__(None, None, None)


# --------------------------------------------------------------------------- import time

IMPORTS = {
    "cacheness": ("import cacheness", "ours"),
    "diskcache.Cache": ("import diskcache", "peer"),
    "joblib.Memory": ("import joblib", "peer"),
    "cachier": ("import cachier", "peer"),
}


def run_import(plan: Plan, work: Workdir) -> list[Row]:
    coll = Collector("import")
    workload = "import in a fresh interpreter"
    # As after an install (pip writes bytecode): a child that may write bytecode,
    # and one import of each before any is timed, so none compiles its sources.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def wall(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)
        return time.perf_counter() - t0

    for code, _kind in IMPORTS.values():
        subprocess.run([sys.executable, "-c", code], capture_output=True, env=env)
    for rep in range(plan.reps):
        base = wall("pass")
        for name in rotate(list(IMPORTS), rep):
            code, kind = IMPORTS[name]
            if coll.failed(workload, name):
                continue
            try:
                spent = wall(code)
            except subprocess.CalledProcessError as exc:
                coll.mark(workload, name, kind, "unavailable", exc.stderr.decode()[-200:])
                continue
            coll.add(
                workload,
                "import",
                "ms",
                "lower",
                name,
                kind,
                max(0.0, spent - base) * 1e3,
                "wall time minus a bare interpreter start",
            )
    return coll.rows()


# --------------------------------------------------------------------------- SQL pull-through


def run_sql(plan: Plan, work: Workdir) -> list[Row]:
    try:
        # Written by another engineer and may not be there yet: import by name.
        bench_sql = importlib.import_module("benchmarks.bench_sql")
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks.bench_sql",):
            raise
        return [
            status_row(
                "sql",
                "SQL pull-through",
                "-",
                "cacheness.sql",
                "ours",
                "unavailable",
                "benchmarks/bench_sql.py not present yet",
            )
        ]
    coll = Collector("sql")
    try:
        results = bench_sql.run(plan.quick)
    except Exception as exc:
        coll.fail("SQL pull-through", "cacheness.sql", "ours", exc)
        return coll.rows()
    for item in results:
        system = str(item["system"])
        kind = "ours" if system.startswith("cacheness") else "peer"
        seconds = item.get("seconds")
        values = seconds if isinstance(seconds, list) else [seconds]
        for v in values:
            coll.add(
                str(item["workload"]),
                "time",
                "s",
                "lower",
                system,
                kind,
                None if v is None else float(v),
                str(item.get("notes", "") or ""),
            )
    return coll.rows()
