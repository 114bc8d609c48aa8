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


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_keeps_writing_after_its_parent_closes(tmp_path: Path) -> None:
    """The child's own connections hold their own locks: the parent closing its store
    (and so, as far as its locks show, being the file's last user) must not checkpoint
    and delete the WAL the child goes on committing to."""
    import os
    import subprocess
    import sys

    store = BlobStore(tmp_path)
    store.put("p", key="p0")
    assert store.get("p0") == "p"
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            store.put("q", key="q1")
            os.write(to_parent_w, b"1")
            os.read(to_child_r, 1)  # the parent has closed its store
            store.put("q", key="q2")
            store.close()
            code = 0
        finally:
            os._exit(code)
    os.read(to_parent_r, 1)
    store.close()
    os.write(to_child_w, b"1")
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    code = (
        "import sys, json; from cacheness.storage import BlobStore; s = BlobStore(sys.argv[1]); "
        "print(json.dumps({k: s.get(k) for k in ('p0', 'q1', 'q2')})); s.close()"
    )
    seen = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert json.loads(seen.stdout) == {"p0": "p", "q1": "q", "q2": "q"}


def test_a_busy_reader_does_not_keep_the_wal_from_being_reset(tmp_path: Path) -> None:
    """One thread reading without pause while another writes: the reader's snapshots
    must let checkpoints reset the WAL, which would otherwise grow with every write."""
    import os

    store = BlobStore(tmp_path)
    store.put("v", key="r")
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            assert store.get("r") == "v"

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(3000):  # ~6,000 WAL frames written in all (two pages a put)
            store.put(b"x" * 3000 + str(i).encode(), key=f"w{i % 500}")
    finally:
        stop.set()
        reader.join()
    wal = os.path.getsize(tmp_path / "metadata.sqlite-wal")
    store.close()
    assert wal < 16 * 1024 * 1024, f"the WAL grew to {wal / 1e6:.1f} MB"
