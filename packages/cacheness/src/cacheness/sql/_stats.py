"""What ``get_cache_stats`` reports: this instance's counters and the ledger's coverage."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from cacheness.sql import _gaps
from cacheness.sql._database import _db
from cacheness.sql._gaps import Interval
from cacheness.sql._request import _value_param

if TYPE_CHECKING:
    from cacheness.sql._cache import SqlCache

__all__: list[str] = []

_COUNTER_OF = {"hit": "hits", "partial": "partial_hits", "miss": "misses"}


@dataclass
class _Counters:
    fetches: int = 0
    rows_fetched: int = 0
    hits: int = 0
    partial_hits: int = 0
    misses: int = 0
    # Threads sharing one cache count at once; the lock keeps every sum whole.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "fetches": self.fetches,
                "rows_fetched": self.rows_fetched,
                "hits": self.hits,
                "partial_hits": self.partial_hits,
                "misses": self.misses,
            }


def _cache_stats(cache: SqlCache) -> dict[str, Any]:
    now = cache._clock()
    with _db(cache, "read cache statistics"), cache.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(cache.table)).scalar_one()
        entries = cache.ledger.entries(conn)
    by_key: dict[str, list[Interval]] = {}
    expired = 0
    for e in entries:
        if e.valid(now):
            by_key.setdefault(e.key, []).append((e.lo, e.hi))
        else:
            expired += 1
    intervals: dict[str, int] = {}
    covered: dict[str, list[tuple[Any, Any]]] = {}
    for label, spans in by_key.items():
        name = _display(label)
        if cache.mode == "lookup":
            intervals[name] = 1
            continue
        grid = _gaps.merge(
            g for g in (_gaps.within(lo, hi, cache.step) for lo, hi in spans) if g is not None
        )
        intervals[name] = len(grid)
        covered[name] = [
            (_value_param(cache, lo * cache.step), _value_param(cache, hi * cache.step))
            for lo, hi in grid
        ]
    activity = cache._counters.snapshot()
    return {
        "table": cache.table_name,
        "backend": cache.engine.dialect.name,
        "rows": int(rows),
        "intervals": intervals,
        "covered": covered,
        "expired_intervals": expired,
        **activity,
    }


def _display(label: str) -> str:
    values = json.loads(label)
    if len(values) == 1:
        return str(values[0])
    return "*" if not values else label
