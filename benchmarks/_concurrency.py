"""Concurrency workload: several processes doing mixed gets and puts on one store.

Each worker opens its own adapter on the shared directory, waits for a common
start time (so interpreter start-up is not measured), then runs a fixed
number of operations: 80 % gets of random preloaded keys, 20 % puts that
overwrite a random key with a new generation of its value. Every get is
checked: a miss of a preloaded key, a value belonging to another key, or an
exception counts as an error.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from benchmarks import adapters
from benchmarks._collect import Collector
from benchmarks._core import Row, Workdir, percentile, rotate

logger = logging.getLogger(__name__)

CONC_SYSTEMS = [
    "cacheness",
    "cacheness.BlobStore",
    "diskcache.Cache",
    "joblib.Memory",
    "cachier",
    "pickle-file",
]

GET_SHARE = 0.8


def conc_value(key: str, generation: int) -> dict[str, Any]:
    return {"key": key, "gen": generation, "payload": "y" * 900}


def _valid(key: str, got: Any) -> bool:
    return (
        isinstance(got, dict)
        and got.get("key") == key
        and got.get("payload") == "y" * 900
        and isinstance(got.get("gen"), int)
    )


def worker(
    system: str, path: str, n_ops: int, n_keys: int, seed: int, start_at: float
) -> dict[str, Any]:
    """Run in a child process; returns per-op latencies (µs), errors and the time span."""
    from pathlib import Path

    adapter = adapters.make_store(system)
    adapter.open(Path(path))
    rng = random.Random(seed)
    latencies: list[float] = []
    errors: list[str] = []
    gets = 0
    clock = time.perf_counter_ns
    try:
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        t_start = time.time()
        for op in range(n_ops):
            key = f"c{rng.randrange(n_keys)}"
            is_get = rng.random() < GET_SHARE
            gets += is_get
            t0 = clock()
            try:
                if is_get:
                    got = adapter.get(key)
                else:
                    adapter.put(key, conc_value(key, seed * 1_000_000 + op))
            except Exception as exc:
                latencies.append((clock() - t0) / 1_000)
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            latencies.append((clock() - t0) / 1_000)
            if is_get and not _valid(key, got):
                what = "a miss" if got is adapters.MISS else type(got).__name__
                errors.append(f"get {key!r} of a preloaded key returned {what}")
        t_end = time.time()
    finally:
        adapter.close()
    return {"lat": latencies, "errors": errors, "gets": gets, "start": t_start, "end": t_end}


def _preload(system: str, path: str, n_keys: int) -> None:
    from pathlib import Path

    adapter = adapters.make_store(system)
    adapter.open(Path(path))
    try:
        for i in range(n_keys):
            key = f"c{i}"
            adapter.put(key, conc_value(key, 0))
    finally:
        adapter.close()


def _warm(_: int) -> int:
    # Import the heavy modules once per worker, before any timed round.
    import os

    for name in CONC_SYSTEMS:
        adapters.make_store(name).unavailable()
    return os.getpid()


def _kill(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's workers (they hang): the executor has no public way to."""
    processes = getattr(pool, "_processes", None) or {}
    for proc in list(processes.values()):
        proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def run_concurrency(plan: Any, work: Workdir) -> list[Row]:
    import multiprocessing

    coll = Collector("concurrency")
    procs = plan.conc_procs
    workload = f"{procs} processes, {int(GET_SHARE * 100)}% get / {100 - int(GET_SHARE * 100)}% put"
    systems = []
    for name in CONC_SYSTEMS:
        adapter = adapters.make_store(name)
        reason = adapter.unavailable()
        if reason is None:
            systems.append(name)
        else:
            coll.mark(workload, name, adapter.kind, "unavailable", reason)
    if not systems:
        return coll.rows()
    total_errors: dict[str, int] = {}
    first_error: dict[str, str] = {}
    ctx = multiprocessing.get_context("spawn")

    def new_pool() -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(max_workers=procs, mp_context=ctx)
        list(pool.map(_warm, range(procs)))
        return pool

    # A worker that hangs (a lock never released) must cost one row, not the run.
    timeout_s = 60.0 + plan.conc_ops * 0.05
    pool = new_pool()
    try:
        for rep in range(plan.reps):
            for name in rotate(systems, rep):
                if coll.failed(workload, name):
                    continue
                kind = adapters.make_store(name).kind
                try:
                    with work.fresh(name) as path:
                        _preload(name, str(path), plan.conc_keys)
                        start_at = time.time() + 0.3
                        futures = [
                            pool.submit(
                                worker,
                                name,
                                str(path),
                                plan.conc_ops,
                                plan.conc_keys,
                                rep * 100 + p + 1,
                                start_at,
                            )
                            for p in range(procs)
                        ]
                        try:
                            results = [f.result(timeout=timeout_s) for f in futures]
                        except TimeoutError:
                            _kill(pool)
                            pool = new_pool()
                            raise TimeoutError(
                                f"a worker did not finish {plan.conc_ops} ops in {timeout_s:.0f} s"
                            ) from None
                except Exception as exc:
                    coll.fail(workload, name, kind, exc)
                    continue
                lat = [x for r in results for x in r["lat"]]
                errors = [e for r in results for e in r["errors"]]
                span = max(r["end"] for r in results) - min(r["start"] for r in results)
                coll.add(workload, "throughput", "ops/s", "higher", name, kind, len(lat) / span)
                coll.add(workload, "p99", "µs", "lower", name, kind, percentile(lat, 99))
                coll.count(workload, name, sum(r["gets"] for r in results), len(errors))
                total_errors[name] = total_errors.get(name, 0) + len(errors)
                first_error.setdefault(name, errors[0] if errors else "")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for name, total in total_errors.items():
        # A total, not a median: one bad read in five repetitions must show.
        note = f"first: {first_error[name]}" if first_error.get(name) else ""
        coll.add(
            workload,
            "errors, all repetitions",
            "count",
            "lower",
            name,
            adapters.make_store(name).kind,
            total,
            note,
        )
    return coll.rows()
