"""kill -9 at random moments of put / update / delete / gc never leaves a broken entry.

A forked child loops over random operations on a few keys and tells the
parent, through a pipe, which operation it starts and which it finished. The
parent SIGKILLs it after a random delay, then checks the store: every key
holds exactly the state after its last finished operation, except the one
operation in flight, which may have landed or not; every value reads back
whole; ``verify()`` finds nothing corrupt, missing or badly signed.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from cacheness.storage import BlobStore

KEYS = [f"k{i}" for i in range(6)] + ["'; DROP TABLE entries; --", "../escape", "ключ"]
SIGNING_KEY = bytes(range(100, 132))
DEFAULT_KILLS = 30
SLOW_KILLS = 300


def _value(n: int) -> Any:
    """Seven distinct values (so keys share content), from 40 bytes to ~5 MB."""
    c = n % 7
    size = (40, 1000, 30_000, 200_000, 600_000, 5_000_000, 3000)[c]
    return {"c": c, "data": bytes([c]) * size}


def _file_bytes(n: int) -> bytes:
    return bytes([n % 5]) * (1000 + 70_000 * (n % 5))


def _open(root: Path, backend: str) -> BlobStore:
    return BlobStore(root, backend=backend, signing_key=SIGNING_KEY)


def _app_name(pid: int) -> str:
    return f"cacheness_crash_{pid}"


def _child(root: Path, backend: str, start: int, conn: Connection, seed: int) -> None:
    rnd = random.Random(seed)
    if backend.startswith("postgresql"):
        # Named so the parent can wait for this child's server sessions to end.
        backend += f"&application_name={_app_name(os.getpid())}"
    store = _open(root, backend)
    conn.send(("ready",))
    n = start
    while True:
        n += 1
        key = rnd.choice(KEYS)
        op = rnd.choices(["put", "file", "meta", "delete", "gc"], [5, 1, 2, 2, 1])[0]
        conn.send(("begin", op, key, n))
        if op == "put":
            store.put(_value(n), key=key, metadata={"n": n})
        elif op == "file":
            store.put_file(io.BytesIO(_file_bytes(n)), key=key, metadata={"n": n})
        elif op == "meta":
            store.update_metadata(key, {"n": n})
        elif op == "delete":
            store.delete(key)
        else:
            store.gc()
        conn.send(("done", op, key, n))


State = tuple[str, int, int] | None  # (kind, n of content, n of metadata)


def _apply(state: State, op: str, n: int) -> State:
    if op == "put":
        return ("put", n, n)
    if op == "file":
        return ("file", n, n)
    if op == "delete":
        return None
    if op == "meta":
        return None if state is None else (state[0], state[1], n)
    return state


def _read_state(store: BlobStore, key: str) -> tuple[Any, Any]:
    got = store.get_with_metadata(key)
    if got is None:
        return None, None
    value, meta = got
    assert meta["signature_valid"] is True
    return value, meta["metadata"]


def _expected(state: State) -> tuple[Any, Any]:
    if state is None:
        return None, None
    kind, content, meta_n = state
    value = _value(content) if kind == "put" else _file_bytes(content)
    return value, {"n": meta_n}


_SESSIONS_SQL = (
    "SELECT pid, application_name, state, wait_event_type, wait_event, "
    "pg_blocking_pids(pid), now() - state_change, left(query, 200) FROM pg_stat_activity"
)


def _wait_for_server_sessions(backend: str, pid: int) -> None:
    """Block until PostgreSQL has ended every session of the killed child.

    A COMMIT the child sent just before SIGKILL still runs to completion on the
    server; reading before its session ends could see the old state and later
    the new one.
    """
    if not backend.startswith("postgresql"):
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(backend, poolclass=sqlalchemy.pool.NullPool)
    query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n")
    try:
        deadline = time.monotonic() + 30
        # Autocommit: PostgreSQL keeps one snapshot of pg_stat_activity per
        # transaction, so polling inside one would never see the sessions end.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while conn.execute(query, {"n": _app_name(pid)}).scalar_one():
                if time.monotonic() > deadline:
                    # Everything the server shows, not only the child's: what blocks it.
                    rows = conn.execute(sqlalchemy.text(_SESSIONS_SQL)).all()
                    raise AssertionError(f"the killed child's sessions did not end: {rows}")
                time.sleep(0.01)
    finally:
        engine.dispose()


def _kill_loop(root: Path, backend: str, kills: int, seed: int) -> None:
    ctx = multiprocessing.get_context("fork")
    rnd = random.Random(seed)
    model: dict[str, State] = dict.fromkeys(KEYS)
    n = 0
    landed = not_landed = 0
    for i in range(kills):
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(root, backend, n, child_end, seed * 1000 + i))
        proc.start()
        child_end.close()
        try:
            assert parent_end.poll(30), "child did not start"
            assert parent_end.recv() == ("ready",)
            time.sleep(rnd.uniform(0.0, 0.12))
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
            assert proc.exitcode == -signal.SIGKILL, proc.exitcode
            _wait_for_server_sessions(backend, proc.pid)
            messages = []
            while parent_end.poll():
                try:
                    messages.append(parent_end.recv())
                except EOFError:
                    break
        finally:
            parent_end.close()
            proc.close()
        in_flight = None
        for msg in messages:
            tag, op, key, num = msg
            n = max(n, num)
            if tag == "begin":
                in_flight = (op, key, num)
            else:
                model[key] = _apply(model[key], op, num)
                in_flight = None
        with _open(root, backend) as store:
            for key in KEYS:
                actual = _read_state(store, key)
                before = _expected(model[key])
                if in_flight is not None and in_flight[1] == key:
                    after_state = _apply(model[key], in_flight[0], in_flight[2])
                    after = _expected(after_state)
                    assert actual in (before, after), (key, in_flight)
                    if actual == after and after != before:
                        model[key] = after_state
                        landed += 1
                    elif after != before:
                        not_landed += 1
                else:
                    assert actual == before, (key, in_flight)
            assert store.list() == sorted(k for k in KEYS if model[k] is not None)
            report = store.verify()
            assert (report.corrupt, report.missing, report.bad_signature) == ([], [], [])
            if i % 10 == 9:
                store.gc()
                assert store.verify().ok
        n += 1
    # The kills must have hit real work, not only idle moments.
    assert landed + not_landed > 0


@pytest.mark.parametrize(
    "backend", ["sqlite", "json", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_sigkill_during_writes(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":
        backend = request.getfixturevalue("postgres_url")
    _kill_loop(tmp_path / "store", backend, DEFAULT_KILLS, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "json"])
def test_sigkill_during_writes_long(tmp_path: Path, backend: str) -> None:
    _kill_loop(tmp_path / "store", backend, SLOW_KILLS, seed=11)
