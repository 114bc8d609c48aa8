"""A SQLite store keeps a lookup's read snapshot open while nothing commits.

What must hold: a commit by any other connection or process is seen by the
very next get; a write in the same thread still works; a snapshot nobody uses,
a closed store and a fork hold no read lock (a held one keeps checkpoints from
finishing, and the WAL would grow).
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cacheness.storage import BlobStore
from cacheness.storage.backends import _snapshot

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX locks")


def _db(root: Path) -> Path:
    (db,) = root.glob("*.sqlite")
    return db


def _checkpoint_busy(db: Path) -> bool:
    """Can a full checkpoint (WAL truncated to nothing) finish right now? A read
    snapshot held by any connection of any process keeps it from finishing."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        conn.execute("PRAGMA busy_timeout = 0")
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return bool(busy)
    finally:
        conn.close()


def _hold(store: BlobStore) -> None:
    """Gets that leave a snapshot held, one that reads from the WAL: a snapshot of
    a WAL checkpointed to the end reads the database file only, and holds nothing
    a checkpoint needs."""
    store.put("written", key="probe")  # far below the 1000 pages of an autocheckpoint
    for i in range(5):
        assert store.get(f"k{i}") == {"n": i}
    assert store.get("probe") == "written"


def _reaper_running() -> bool:
    return any(t.name == "cacheness-sqlite-snapshots" for t in threading.enumerate())


def _wait_not_busy(db: Path, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _checkpoint_busy(db):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(autouse=True)
def slow_reaper(monkeypatch: pytest.MonkeyPatch) -> None:
    """A held snapshot outlives its last use by 0.3 s or more (the thread reads the
    interval each round): the probes right after the gets see it held, even on a
    loaded machine."""
    monkeypatch.setattr(_snapshot, "IDLE_S", 0.3)


@pytest.fixture
def store(tmp_path: Path):
    with BlobStore(tmp_path / "s") as s:
        for i in range(20):
            s.put({"n": i}, key=f"k{i}")
        yield s


def test_gets_hold_a_snapshot_that_an_idle_store_lets_go(store: BlobStore) -> None:
    db = _db(store.root)
    _hold(store)
    assert _checkpoint_busy(db), "the gets held no snapshot: the feature is off"
    assert _wait_not_busy(db, seconds=10 * _snapshot.IDLE_S + 2), "an idle snapshot stayed held"
    deadline = time.monotonic() + 5
    while _reaper_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _reaper_running(), "nothing is held, yet the thread runs on"
    assert store.get("k3") == {"n": 3}  # and a get after that begins a new one


def test_commits_elsewhere_are_seen_by_the_next_get(store: BlobStore, tmp_path: Path) -> None:
    other = BlobStore(tmp_path / "s")
    try:
        for round_ in range(30):
            assert store.get("k1") == ({"n": 1} if round_ == 0 else {"n": round_ - 1})
            assert store.get("k2") == {"n": 2}  # the snapshot is reused here
            other.put({"n": round_}, key="k1")  # overwrite
            other.put({"round": round_}, key=f"new{round_}")  # a new key
            assert store.get("k1") == {"n": round_}
            assert store.get(f"new{round_}") == {"round": round_}
        other.delete("k5")
        assert store.get("k5", default="gone") == "gone"
    finally:
        other.close()


def test_commits_by_another_process_are_seen_by_the_next_get(
    store: BlobStore, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from cacheness.storage import BlobStore
        with BlobStore({str(tmp_path / "s")!r}) as s:
            for line in sys.stdin:
                n = int(line)
                s.put({{"n": n}}, key="k0")
                s.put(n, key=f"fresh{{n}}")
                print("ok", flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        for n in range(100, 110):
            assert store.get("k7") == {"n": 7}  # a snapshot is held when the child writes
            assert store.get("k8") == {"n": 8}
            child.stdin.write(f"{n}\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "ok"
            assert store.get("k0") == {"n": n}
            assert store.get(f"fresh{n}") == n
    finally:
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
        assert child.wait(timeout=60) == 0


def test_writes_and_reads_alternating_in_one_thread(store: BlobStore) -> None:
    for i in range(200):
        store.put({"i": i}, key="hot")
        assert store.get("hot") == {"i": i}
        assert store.get("k4") == {"n": 4}
        store.delete(f"k{i % 20}")
        assert store.get(f"k{i % 20}", default=None) is None
        store.put({"n": i % 20}, key=f"k{i % 20}")
    assert [store.get(f"k{i}") for i in range(20)] == [{"n": i} for i in range(20)]


def test_close_lets_the_snapshot_go(tmp_path: Path) -> None:
    s = BlobStore(tmp_path / "s")
    for i in range(5):
        s.put(i, key=f"k{i}")
    db = _db(tmp_path / "s")
    s.put("written", key="probe")
    assert [s.get(f"k{i}") for i in range(5)] == list(range(5))
    assert _checkpoint_busy(db)
    s.close()
    assert not _checkpoint_busy(db)


def _child_checkpoint(db: str, out: multiprocessing.Queue) -> None:
    out.put(_checkpoint_busy(Path(db)))


def test_a_fork_inherits_no_snapshot(store: BlobStore) -> None:
    db = _db(store.root)
    _hold(store)
    assert _checkpoint_busy(db)
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()
    p = ctx.Process(target=_child_checkpoint, args=(str(db), out))
    p.start()
    assert not _reaper_running()  # stopped for the fork (and not started again since)
    busy_in_child = out.get(timeout=30)
    p.join(timeout=30)
    assert p.exitcode == 0
    assert busy_in_child is False  # the fork ended the parent's snapshot first
    assert store.get("k1") == {"n": 1}


def test_close_waits_for_a_snapshot_being_ended(store: BlobStore) -> None:
    """The reaper ends a snapshot (a COMMIT) under the reader's lock; closing the
    connection in the middle of that COMMIT crashed the process (seen in the
    DataFrame benchmark). A slow COMMIT shows whether close waits for it."""
    _hold(store)
    reader = store.metadata_backend._local.reader  # type: ignore[attr-defined]
    assert reader.held
    events: list[str] = []
    in_commit = threading.Event()

    class SlowCommit:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def execute(self, sql: str, *args: object) -> object:
            if sql == "COMMIT":
                in_commit.set()
                time.sleep(0.3)
                events.append("commit done")
            return self._conn.execute(sql, *args)

        def close(self) -> None:
            events.append("close")
            self._conn.close()

    reader.conn = SlowCommit(reader.conn)

    def reaper_like() -> None:
        with reader.lock:  # as _Reaper._visit ends an idle snapshot
            reader._end()

    t = threading.Thread(target=reaper_like)
    t.start()
    assert in_commit.wait(5)
    store.close()
    t.join()
    assert events == ["commit done", "close"]
    assert not _checkpoint_busy(_db(store.root))


def test_alternating_writes_back_off_and_reads_resume_holding(store: BlobStore) -> None:
    """A snapshot that a write ends after one lookup cost a BEGIN and a COMMIT for
    nothing: the reader backs off to plain lookups, and holds again once reads
    repeat without writes in between."""
    reader = store.metadata_backend._local.reader  # type: ignore[attr-defined]
    for i in range(12):
        store.put(i, key="w")
        assert store.get("w") == i
    assert reader.backoff >= 4 and not reader.held
    for _ in range(200):  # the skipped lookups run out; the next snapshot is reused
        assert store.get("k1") == {"n": 1}
    assert reader.held and reader.uses > 100
    assert _checkpoint_busy(_db(store.root))
    store.put("x", key="w")  # ends a snapshot that served many: no backing off
    assert not reader.held and reader.backoff == 0 and reader.skip == 0


def test_a_failed_lookup_leaves_no_transaction_open(store: BlobStore) -> None:
    from cacheness.storage.errors import CacheBackendError

    _hold(store)
    other = sqlite3.connect(_db(store.root), isolation_level=None)
    try:
        other.execute("ALTER TABLE entries RENAME TO entries_away")
        with pytest.raises(CacheBackendError):
            store.get("k1")
        other.execute("ALTER TABLE entries_away RENAME TO entries")
    finally:
        other.close()
    assert store.get("k1") == {"n": 1}
    store.put("after", key="k1")  # a write begins: nothing was left open
    assert store.get("k1") == "after"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_stores_dropped_without_close_leave_no_descriptors(tmp_path: Path) -> None:
    import gc

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    before = open_fds()
    for i in range(50):
        s = BlobStore(tmp_path / f"s{i}")
        s.put(i, key="k")
        assert s.get("k") == i
        del s
    deadline = time.monotonic() + 5  # the reaper lets go of the last snapshots
    while True:
        gc.collect()
        if open_fds() <= before or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert open_fds() <= before
