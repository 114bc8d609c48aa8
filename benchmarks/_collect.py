"""Accumulate repeated measurements per (workload, metric, system) and turn them into rows."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from typing import Any

from benchmarks._core import Row, make_row, status_row

logger = logging.getLogger(__name__)


def same(expected: Any, actual: Any) -> bool:
    """Value read back equals the value written, including type, dtype and shape."""
    import sys

    np = sys.modules.get("numpy")
    pd = sys.modules.get("pandas")
    if np is not None and isinstance(expected, np.ndarray):
        return (
            isinstance(actual, np.ndarray)
            and actual.dtype == expected.dtype
            and actual.shape == expected.shape
            and actual.flags.f_contiguous == expected.flags.f_contiguous
            and bool(np.array_equal(expected, actual))
        )
    if pd is not None and isinstance(expected, pd.DataFrame):
        return (
            isinstance(actual, pd.DataFrame)
            and bool(expected.equals(actual))
            and list(expected.columns) == list(actual.columns)
            and type(expected.index) is type(actual.index)
            and bool(expected.index.equals(actual.index))
            and bool((expected.dtypes == actual.dtypes).all())
        )
    return type(expected) is type(actual) and bool(expected == actual)


@dataclass
class _Series:
    workload: str
    metric: str
    unit: str
    better: str
    system: str
    kind: str
    values: list[float] = field(default_factory=list)
    notes: str = ""


class Collector:
    def __init__(self, group: str) -> None:
        self.group = group
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._checks: dict[tuple[str, str], list[int]] = {}  # [checked, wrong]
        self._status: dict[tuple[str, str], tuple[str, str, str]] = {}  # -> status, kind, notes
        self._order: list[tuple[str, str]] = []  # (workload, system) first seen

    def _seen(self, workload: str, system: str) -> None:
        if (workload, system) not in self._order:
            self._order.append((workload, system))

    def add(
        self,
        workload: str,
        metric: str,
        unit: str,
        better: str,
        system: str,
        kind: str,
        value: float | None,
        notes: str = "",
    ) -> None:
        self._seen(workload, system)
        key = (workload, metric, system)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(workload, metric, unit, better, system, kind)
        if value is not None:
            series.values.append(float(value))
        if notes and notes not in series.notes:
            series.notes = f"{series.notes}; {notes}" if series.notes else notes

    def check(self, workload: str, system: str, ok: bool) -> None:
        counts = self._checks.setdefault((workload, system), [0, 0])
        counts[0] += 1
        if not ok:
            counts[1] += 1

    def count(self, workload: str, system: str, checked: int, wrong: int) -> None:
        counts = self._checks.setdefault((workload, system), [0, 0])
        counts[0] += checked
        counts[1] += wrong

    def failed(self, workload: str, system: str) -> bool:
        return (workload, system) in self._status

    def fail(self, workload: str, system: str, kind: str, exc: BaseException) -> None:
        self._seen(workload, system)
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        loc = f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else ""
        text = f"{type(exc).__name__}: {exc}"[:300] + loc
        logger.warning("%s / %s failed: %s", workload, system, text)
        self._status[(workload, system)] = ("error", kind, text)

    def mark(self, workload: str, system: str, kind: str, status: str, notes: str) -> None:
        self._seen(workload, system)
        self._status[(workload, system)] = (status, kind, notes)

    def rows(self) -> list[Row]:
        out: list[Row] = []
        for workload, system in self._order:
            status = self._status.get((workload, system))
            if status is not None:
                out.append(
                    status_row(self.group, workload, "-", system, status[1], status[0], status[2])
                )
                continue
            checked, wrong = self._checks.get((workload, system), [0, 0])
            for (w, _m, s), series in self._series.items():
                if w != workload or s != system:
                    continue
                notes = series.notes
                verified: bool | None = None
                if checked:
                    verified = wrong == 0
                    if wrong:
                        extra = f"{wrong} of {checked} values read back differed"
                        notes = f"{notes}; {extra}" if notes else extra
                out.append(
                    make_row(
                        self.group,
                        series.workload,
                        series.metric,
                        series.unit,
                        series.better,
                        series.system,
                        series.kind,
                        series.values,
                        verified=verified,
                        notes=notes,
                    )
                )
        return out
