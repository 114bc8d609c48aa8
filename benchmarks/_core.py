"""Result rows, statistics, timing and resource helpers shared by every workload.

A *row* is one (workload, metric, system) measurement: the median over the
repetitions, the spread (min and max over repetitions), whether every value
read back was verified equal to the value written, and notes. Ratios to the
best peer are computed from rows, after the run, by :func:`add_ratios`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Who a system is, for the ratio column: "ours" rows are compared with the
# best "peer"; "baseline" (naive pickle) and "reference" (lru_cache, parquet,
# memcpy, codecs) rows are shown for orientation and never count as a peer.
KINDS = ("ours", "peer", "baseline", "reference")

MB = 1_000_000  # throughput and sizes are reported in decimal megabytes


@dataclass
class Row:
    group: str
    workload: str
    metric: str
    unit: str
    better: str  # "lower" or "higher"
    system: str
    kind: str
    median: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    status: str = "ok"  # "ok" | "unavailable" | "error" | "skipped"
    verified: bool | None = None
    notes: str = ""
    ratio: float | None = None  # vs best peer; > 1 means this system is better
    best_peer: str | None = None
    values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return None, None, None
    return statistics.median(clean), min(clean), max(clean)


def make_row(
    group: str,
    workload: str,
    metric: str,
    unit: str,
    better: str,
    system: str,
    kind: str,
    values: Sequence[float],
    *,
    verified: bool | None = None,
    notes: str = "",
) -> Row:
    med, lo, hi = summarize(values)
    return Row(
        group=group,
        workload=workload,
        metric=metric,
        unit=unit,
        better=better,
        system=system,
        kind=kind,
        median=med,
        lo=lo,
        hi=hi,
        n=len(values),
        verified=verified,
        notes=notes,
        values=[float(v) for v in values],
    )


def status_row(
    group: str, workload: str, metric: str, system: str, kind: str, status: str, notes: str
) -> Row:
    return Row(
        group=group,
        workload=workload,
        metric=metric,
        unit="",
        better="lower",
        system=system,
        kind=kind,
        status=status,
        notes=notes,
    )


def add_ratios(rows: list[Row]) -> None:
    """Fill ``ratio``/``best_peer``: > 1 means the row's system beats the best peer."""
    by_metric: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        by_metric.setdefault((row.workload, row.metric), []).append(row)
    for group in by_metric.values():
        peers = [
            r
            for r in group
            if r.kind == "peer" and r.status == "ok" and r.median and r.verified is not False
        ]
        if not peers:
            continue
        pick = min if group[0].better == "lower" else max
        best = pick(peers, key=lambda r: r.median or 0.0)
        assert best.median is not None
        for row in group:
            if row.status != "ok" or row.median is None or row.median <= 0:
                continue
            row.best_peer = best.system
            if row.better == "lower":
                row.ratio = best.median / row.median
            else:
                row.ratio = row.median / best.median


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def rotate(items: Sequence[Any], shift: int) -> list[Any]:
    """Interleave systems: each repetition starts with a different one."""
    if not items:
        return []
    k = shift % len(items)
    return list(items[k:]) + list(items[:k])


def dir_bytes(path: Path) -> int:
    """Apparent size of every file under ``path`` (SQLite WAL and journals included)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


class Workdir:
    """Fresh directories under one base on one disk, removed after each use.

    Every system writes below the same base directory, so all of them go
    through the same filesystem and page cache.
    """

    def __init__(self, base: str | None = None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cacheness-bench-", dir=base))
        self._n = 0

    @contextlib.contextmanager
    def fresh(self, label: str, *, defer_delete: bool = False) -> Iterator[Path]:
        """A new empty directory, removed afterwards.

        ``defer_delete``: for stores of hundreds of thousands of files, whose
        removal takes minutes of disk time; the directory is renamed aside
        (instant) and removed by a background process after the run.
        """
        self._n += 1
        safe = "".join(c if c.isalnum() else "_" for c in label)[:40]
        path = self.base / f"{self._n:04d}-{safe}"
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            if defer_delete:
                self._trash.mkdir(exist_ok=True)
                path.rename(self._trash / path.name)
            else:
                shutil.rmtree(path, ignore_errors=True)

    @property
    def _trash(self) -> Path:
        return self.base / "trash"

    def cleanup(self) -> None:
        if self._trash.exists():
            # Measurements are over: let a detached process do the slow unlinks.
            import subprocess

            moved = self.base.with_name(self.base.name + "-deleting")
            self.base.rename(moved)
            subprocess.Popen(
                ["rm", "-rf", str(moved)],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            return
        shutil.rmtree(self.base, ignore_errors=True)


class PeakRSS:
    """Peak resident-memory growth of this process over a block (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs`` = 5) and
    reads ``VmHWM`` afterwards: exact, and free of sampling threads. Where that
    is not available, ``growth_mb`` stays None and the row says so.
    """

    def __init__(self) -> None:
        self.growth_mb: float | None = None
        self._start: int | None = None

    @staticmethod
    def _read(field_name: str) -> int | None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith(field_name):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def __enter__(self) -> PeakRSS:
        trim_malloc()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._start = self._read("VmRSS:")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is None:
            return
        peak = self._read("VmHWM:")
        if peak is not None:
            self.growth_mb = max(0, peak - self._start) / MB


def pin_malloc() -> None:
    """Make large allocations visible to RSS measurements (glibc only; no-op elsewhere).

    glibc raises its mmap threshold after a large block is freed (up to 32 MB),
    after which arrays of that size come from the heap and reuse freed memory:
    a get that allocates its result would then show no RSS growth at all.
    Setting the threshold explicitly turns that adaptation off.
    """
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        if not name:
            return
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 128 * 1024)
        libc.mallopt(m_trim_threshold, 128 * 1024)
    except (OSError, AttributeError):
        return


def trim_malloc() -> None:
    """Give freed heap memory back to the OS before a measurement (glibc only)."""
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        if name:
            ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        return
