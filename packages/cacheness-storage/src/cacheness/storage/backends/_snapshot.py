"""Read snapshots that stay open between lookups while nothing has committed.

In WAL mode an autocommit read takes and drops a read lock on the ``-shm`` file:
two ``fcntl`` calls, ~2.3 µs of a ~4.5 µs primary-key lookup here. A thread's
:class:`Reader` instead keeps its read transaction open across lookups for as
long as the WAL-index header is unchanged. Every commit, by any connection in
any process, rewrites that header (the first 48 bytes of the ``-shm`` file; see
https://sqlite.org/walformat.html), so an unchanged header means the open
snapshot is still the newest state of the database.

A held read lock keeps checkpoints from moving past it (the WAL would grow), so
a snapshot is never left behind: a write or any other use of the connection
ends it first, a :class:`_Reaper` thread ends one not used for ``IDLE_S``, and
a fork ends them all (a child must not inherit locks it does not hold). A
snapshot that served one lookup only (reads alternating with writes) cost a
BEGIN and a COMMIT for nothing: the next lookups then run plain, twice as many
each time it happens again, up to ``_MAX_SKIP``.
"""

from __future__ import annotations

import logging
import mmap
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any, Final

__all__ = ["IDLE_S", "Reader", "map_header"]

logger = logging.getLogger(__name__)

IDLE_S: Final = 0.01  # a snapshot unused for one to two of these is ended
_HEADER: Final = 48  # the first copy of the WAL-index header (mxFrame at 16..20)
# Past this many frames in the WAL (twice SQLite's automatic checkpoint), no new
# snapshot is held until a checkpoint has reset it.
_WAL_FRAMES_MAX: Final = 2000
_MAX_SKIP: Final = 64


class _Header:
    """A read-only mapping of one ``-shm`` file's header, shared by every Reader of
    this process on that file.

    Closing any descriptor of a file drops every POSIX lock the process holds on
    it, SQLite's included (its read locks, and the lock that keeps another process
    from resetting the ``-shm`` under a live mapping). So the descriptor and the
    mapping (which holds a duplicate) are closed only once no connection of ours
    uses the file; ``release`` counts them down.
    """

    __slots__ = ("fd", "file_id", "map", "refs")

    def __init__(self, file_id: tuple[int, int], fd: int, mapped: mmap.mmap) -> None:
        self.file_id = file_id
        self.fd = fd
        self.map = mapped
        self.refs = 0

    def release(self) -> None:
        with _HEADERS_LOCK:
            self.refs -= 1
            if self.refs or _HEADERS.get(self.file_id) is not self:
                return
            del _HEADERS[self.file_id]
        self.map.close()
        os.close(self.fd)


_HEADERS: dict[tuple[int, int], _Header] = {}
_HEADERS_LOCK = threading.Lock()


def map_header(conn: sqlite3.Connection, db_path: Path) -> _Header | None:
    """The WAL-index header of ``conn``'s database at ``db_path`` (one more user of
    it: call ``release`` when ``conn`` is closed), or None when there is none to
    watch (not in WAL mode): lookups then run plain."""
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            return None
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # makes the -shm
    except sqlite3.Error:
        return None
    shm = f"{db_path}-shm"
    with _HEADERS_LOCK:
        try:
            st = os.stat(shm)
        except OSError:
            return None
        header = _HEADERS.get((st.st_dev, st.st_ino))
        if header is None:
            if st.st_size < _HEADER:
                return None
            try:
                fd = os.open(shm, os.O_RDONLY)
            except OSError:
                return None
            # From here fd stays open (see _Header), even if the mapping fails.
            try:
                st = os.fstat(fd)
                mapped = mmap.mmap(fd, _HEADER, prot=mmap.PROT_READ)
            except (OSError, ValueError):
                return None
            file_id = (st.st_dev, st.st_ino)
            header = _HEADERS.get(file_id)
            if header is None:
                header = _HEADERS[file_id] = _Header(file_id, fd, mapped)
        header.refs += 1
        return header


class Reader:
    """One thread's connection and cursor, with the snapshot it may hold open."""

    __slots__ = (
        "backoff",
        "conn",
        "cur",
        "header",
        "header_file",
        "header_map",
        "held",
        "lock",
        "pid",
        "skip",
        "touched",
        "uses",
    )

    def __init__(self, conn: sqlite3.Connection, header: _Header | None) -> None:
        self.conn = conn
        self.header_file = header
        self.pid = os.getpid()
        self.cur = conn.cursor()  # a statement through a new cursor costs ~0.4 µs more
        self.lock = threading.Lock()  # the owner's lookups against the reaper's ending
        self.header_map = None if header is None else header.map
        self.held = False
        self.header = b""  # the header as it was before the snapshot began
        self.uses = 0
        self.touched = False
        self.skip = 0  # lookups to run plain before holding a snapshot again
        self.backoff = 0

    def row(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The row of ``sql``, a query returning at most one (fetching it resets the
        statement), or None. Raises ``sqlite3.Error``."""
        with self.lock:
            if self.held:
                if self.header_map[:_HEADER] == self.header:  # type: ignore[index]
                    self.uses += 1
                    self.touched = True
                    return self.cur.execute(sql, params).fetchone()
                self._end()  # something committed: this snapshot is out of date
            if self.skip or self.header_map is None or self.conn.in_transaction:
                # Backing off, nothing to watch, or inside the caller's own transaction.
                if self.skip:
                    self.skip -= 1
                return self.cur.execute(sql, params).fetchone()
            # Read before the snapshot begins: a commit after this read changes the
            # header from what is kept, so the next lookup begins a newer snapshot.
            header = self.header_map[:_HEADER]
            if int.from_bytes(header[16:20], sys.byteorder) > _WAL_FRAMES_MAX:
                # A long WAL: a reader beginning snapshot after snapshot behind the
                # writers' commits would keep every checkpoint from resetting it, and
                # it would grow without end. Plain reads let one through.
                return self.cur.execute(sql, params).fetchone()
            self.conn.execute("BEGIN")
            try:
                row = self.cur.execute(sql, params).fetchone()
            except BaseException:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the lookup's own error is the one to report
                raise
            self.header = header
            self.held = True
            self.uses = 1
            self.touched = True
        _REAPER.watch(self)
        return row

    def release(self) -> None:
        """End the snapshot if one is open (the connection is then in autocommit)."""
        if self.held:
            with self.lock:
                if self.held:
                    self._end()

    def close(self) -> None:
        """End the snapshot and close the connection (then the header, if this was
        the last connection of ours on the file)."""
        with self.lock:  # never while the reaper is ending the snapshot on it
            if self.held:
                self._end()
            self.conn.close()
        header, self.header_file, self.header_map = self.header_file, None, None
        if header is not None:
            header.release()

    def __del__(self) -> None:
        # A store dropped without close(): its connection goes with this object, so
        # the header's descriptor may go too (closed after the connection, see
        # _Header), or every such store would keep two descriptors open for good.
        # In a forked child the descriptor is the parent's copy: closing it would drop
        # the locks of the child's own connections to the file, so it stays open.
        # (A held snapshot keeps its Reader referenced by the reaper: none is held here.)
        if self.header_file is not None and self.pid == os.getpid():
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown: nothing to keep
                pass

    def _end(self) -> None:
        """End the open snapshot (``self.lock`` held). ``held`` turns False only once
        the COMMIT is done: ``release`` looks at it without the lock, and must wait
        for an end in progress rather than use the connection beside it."""
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:  # a closed connection: nothing is held any more
            logger.debug("ending a read snapshot: %s", exc)
        self.held = False
        if self.uses > 1:
            self.backoff = 0
        else:
            self.backoff = min(self.backoff * 2 or 1, _MAX_SKIP)
            self.skip = self.backoff


class _Reaper:
    """Ends snapshots nobody has used for ``IDLE_S``: a daemon thread that runs only
    while some snapshot is held, so an idle process has no thread of ours (a fork
    from a process with threads warns on Python 3.12 and later)."""

    def __init__(self) -> None:
        self._held: set[Reader] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set before a fork: stop now, do not sleep on
        self._thread: threading.Thread | None = None

    def watch(self, reader: Reader) -> None:
        with self._lock:
            self._held.add(reader)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cacheness-sqlite-snapshots", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            stopping = self._wake.wait(IDLE_S)
            for reader in list(self._held):
                if stopping:
                    reader.release()
                    self._held.discard(reader)
                else:
                    self._visit(reader)
            with self._lock:  # watch() adds under it: no reader is left unwatched
                if stopping or not self._held:
                    self._thread = None
                    return

    def _visit(self, reader: Reader) -> None:
        if not reader.lock.acquire(blocking=False):
            return  # in use right now: not idle
        try:
            if reader.held and reader.touched:
                reader.touched = False  # used since the last visit
                return
            if reader.held:
                reader._end()
            self._held.discard(reader)
        finally:
            reader.lock.release()

    def before_fork(self) -> None:
        """End every snapshot and stop the thread: the child must not think it holds
        the parent's read locks, and the parent forks with no thread of ours."""
        thread = self._thread
        if thread is not None:
            self._wake.set()
            thread.join()
            self._wake.clear()
        for reader in list(self._held):
            reader.release()
        self._held.clear()

    def after_fork_in_child(self) -> None:
        global _HEADERS_LOCK
        self._lock = threading.Lock()
        self._thread = None
        _HEADERS_LOCK = threading.Lock()  # a parent's thread may have held it at the fork


_REAPER: Final = _Reaper()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_REAPER.before_fork, after_in_child=_REAPER.after_fork_in_child)
