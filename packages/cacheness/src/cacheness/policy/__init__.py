"""What the cache keeps, for how long, and what goes first: the cache index.

One interface (:class:`CacheIndex`, in ``_base``) with an implementation per
metadata backend: SQLite (``_sqlite``, the default; ``_shared_sqlite`` inside
the store's file when it can be), a JSON file (``_json``) and SQLAlchemy databases such as
PostgreSQL (``_sqlalchemy``, imported only when asked for: SQLAlchemy is an
optional extra). TTL, the size and entry limits, the lru/lfu/fifo orders and
the statistics are enforced here, in the index's own transactions.
"""

from __future__ import annotations

from cacheness.policy._base import (
    COUNTERS,
    HELD_MARK,
    POLICY_ORDER,
    ROW_FIELDS,
    CacheIndex,
    Generation,
    IndexRow,
    Limits,
    Pending,
    PutResult,
    filter_matches,
    is_held,
)
from cacheness.policy._shared_sqlite import SharedSqliteIndex
from cacheness.policy._sqlite import SqliteIndex

__all__ = [
    "COUNTERS",
    "HELD_MARK",
    "POLICY_ORDER",
    "ROW_FIELDS",
    "CacheIndex",
    "Generation",
    "IndexRow",
    "Limits",
    "Pending",
    "PutResult",
    "SharedSqliteIndex",
    "SqliteIndex",
    "filter_matches",
    "is_held",
]
