"""kill -9 during cache puts: the index row and the store entry land together or not at all.

On SQLite both live in one file and commit in one transaction. A forked child
loops over puts and deletes of a few keys (small inline values and big blob
values), telling the parent what it starts and finishes; the parent SIGKILLs
it at a random moment and checks that every key reads back the value of its
last finished operation (or of the one in flight), that the counters match
the rows, and that at most the one in-flight put left a store entry behind.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cacheness import cacheness
from cacheness.policy import is_held

KEYS = [f"k{i}" for i in range(5)]
KILLS = 12


def _value(n: int) -> Any:
    size = (10, 900, 3000, 40_000)[n % 4]  # inline up to 16 KiB, a blob above
    return {"n": n, "data": bytes([n % 251]) * size}


def _child(root: Path, conn: Connection, seed: int, start: int) -> None:
    rnd = random.Random(seed)
    cache = cacheness(cache_dir=root)
    conn.send(("ready", 0, "", 0))
    n = start
    while True:
        n += 1
        key = rnd.choice(KEYS)
        op = "delete" if rnd.random() < 0.2 else "put"
        conn.send(("begin", op, key, n))
        if op == "put":
            cache.put(_value(n), item=key)
        else:
            cache.invalidate(item=key)
        conn.send(("done", op, key, n))


def test_killed_puts_leave_index_and_store_consistent(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    state: dict[str, int | None] = {}
    rnd = random.Random(7)
    start = 0
    for kill in range(KILLS):
        parent, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(tmp_path, child_end, kill, start))
        proc.start()
        child_end.close()
        assert parent.recv()[0] == "ready"
        deadline = time.monotonic() + rnd.uniform(0.02, 0.25)
        in_flight: tuple[str, str, int] | None = None
        while time.monotonic() < deadline:
            if parent.poll(0.005):
                kind, op, key, n = parent.recv()
                if kind == "begin":
                    in_flight = (op, key, n)
                else:
                    state[key] = n if op == "put" else None
                    in_flight = None
                start = max(start, n)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        while parent.poll():  # messages sent before the kill
            try:
                kind, op, key, n = parent.recv()
            except EOFError:
                break
            if kind == "begin":
                in_flight = (op, key, n)
            else:
                state[key] = n if op == "put" else None
                in_flight = None
            start = max(start, n)
        parent.close()
        start += 1000

        with cacheness(cache_dir=tmp_path) as cache:
            for key in KEYS:
                got = cache.get(item=key)
                allowed = [None if state.get(key) is None else _value(state[key])]  # type: ignore[arg-type]
                if in_flight is not None and in_flight[1] == key:
                    allowed.append(_value(in_flight[2]) if in_flight[0] == "put" else None)
                assert got in allowed, (kill, key, got and got["n"], state.get(key), in_flight)
            every_row = cache._index.store_keys()
            # Small values live in their index rows; the rest must be in the store.
            rows = {k for k in every_row if not is_held(k)}
            stored = set(cache._store.list())
            assert rows <= stored  # no index row without its value
            # A put commits both at once; only a replaced value whose delete was cut
            # short may linger (cleanup_expired removes it after a grace period).
            orphans = stored - rows
            assert len(orphans) <= 1
            for orphan in orphans:
                # Never the value being put: that one commits with its index row.
                assert in_flight is None or cache._store.get(orphan)["n"] != in_flight[2]
            cache._sweep_orphans(None)  # so the next round counts only its own
            assert cache.stats()["entries"] == len(every_row)
            assert cache._store.verify().ok
