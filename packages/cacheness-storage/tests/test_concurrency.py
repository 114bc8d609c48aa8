"""Several processes, each with several threads, hammer one store at once.

Each thread owns some keys (and so knows what they must hold at the end) and
shares others with everyone (whose values must always be whole and valid).
No exception may leak, no committed write may be lost.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from cacheness.storage import BlobStore

PROCESSES = 4
THREADS = 2  # per process: 8 threads in all
SHARED = [f"shared-{i}" for i in range(4)]


def _value(writer: str, seq: int) -> dict[str, Any]:
    size = (10, 3000, 70_000)[seq % 3]
    body = f"{writer}:{seq}".encode() * (size // 8 + 1)
    return {"writer": writer, "seq": seq, "body": body}


def _valid(value: Any) -> bool:
    return isinstance(value, dict) and value == _value(value["writer"], value["seq"])


def _thread(store: BlobStore, name: str, seconds: float, out: dict[str, Any]) -> None:
    rnd = random.Random(name)
    own = [f"{name}-{i}" for i in range(6)]
    final: dict[str, Any] = {}
    ops = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ops += 1
            r = rnd.random()
            if r < 0.35:
                key = rnd.choice(own)
                store.put(_value(name, ops), key=key, metadata={"seq": ops})
                final[key] = ops
            elif r < 0.45:
                key = rnd.choice(own)
                store.delete(key)
                final[key] = None
            elif r < 0.60:
                key = rnd.choice(own)
                want = final.get(key)
                got = store.get(key)
                assert (got is None) if want is None else got == _value(name, want), key
            elif r < 0.75:
                store.put(_value(name, ops), key=rnd.choice(SHARED))
            elif r < 0.80:
                store.delete(rnd.choice(SHARED))
            else:
                got = store.get(rnd.choice(SHARED))
                assert got is None or _valid(got), "a shared key returned a broken value"
        out[name] = {"final": final, "ops": ops, "error": None}
    except BaseException:
        out[name] = {"final": final, "ops": ops, "error": traceback.format_exc()}


def _process(root: str, backend: str, index: int, seconds: float, result: str) -> None:
    out: dict[str, Any] = {}
    with BlobStore(root, backend=backend) as store:
        threads = [
            threading.Thread(target=_thread, args=(store, f"p{index}t{t}", seconds, out))
            for t in range(THREADS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    Path(result).write_text(json.dumps(out))


def _hammer(tmp_path: Path, backend: str, seconds: float) -> None:
    root = tmp_path / "store"
    with BlobStore(root, backend=backend) as store:
        store.put("created", key="init")  # create the files before the race
    ctx = multiprocessing.get_context("fork")
    results = [tmp_path / f"result-{i}.json" for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=_process, args=(str(root), backend, i, seconds, str(results[i])))
        for i in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
        p.close()
    outcome: dict[str, Any] = {}
    for r in results:
        outcome.update(json.loads(r.read_text()))
    assert len(outcome) == PROCESSES * THREADS
    errors = {name: o["error"] for name, o in outcome.items() if o["error"]}
    assert not errors, "\n".join(errors.values())
    assert all(o["ops"] > 5 for o in outcome.values()), outcome
    with BlobStore(root, backend=backend) as store:
        for name, o in outcome.items():
            for key, seq in o["final"].items():
                got = store.get(key)
                assert got == (None if seq is None else _value(name, seq)), key
        for key in SHARED:
            got = store.get(key)
            assert got is None or _valid(got)
        report = store.verify()
        assert (report.corrupt, report.missing, report.bad_signature) == ([], [], [])
        store.gc()
        assert store.verify().ok


@pytest.mark.parametrize(
    "backend", ["sqlite", "json", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_processes_and_threads(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":
        backend = request.getfixturevalue("postgres_url")
    _hammer(tmp_path, backend, seconds=3.0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "json"])
def test_processes_and_threads_long(tmp_path: Path, backend: str) -> None:
    _hammer(tmp_path, backend, seconds=30.0)


def _open_and_write(root: str, backend: str, index: int, barrier: Any) -> None:
    barrier.wait(30)
    with BlobStore(root, backend=backend) as store:
        for i in range(15):
            store.put({"p": index, "i": i}, key=f"p{index}-{i}")
            store.put({"same": i}, key=f"same-{i}")


@pytest.mark.parametrize("backend", ["sqlite", "json"])
def test_many_processes_open_a_fresh_store_at_once(tmp_path: Path, backend: str) -> None:
    """Creating the database, switching it to WAL and the first writes all race here."""
    ctx = multiprocessing.get_context("fork")
    n = 6
    barrier = ctx.Barrier(n)
    root = tmp_path / "fresh"
    procs = [
        ctx.Process(target=_open_and_write, args=(str(root), backend, i, barrier)) for i in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
        p.close()
    with BlobStore(root, backend=backend) as store:
        assert len(store.list(prefix="p")) == n * 15
        assert [store.get(f"same-{i}") for i in range(15)] == [{"same": i} for i in range(15)]
        assert store.verify().ok
