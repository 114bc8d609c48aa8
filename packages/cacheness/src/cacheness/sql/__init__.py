"""SQL pull-through cache: rows of a slow source kept in a local SQL table.

::

    from datetime import timedelta
    from sqlalchemy import Float, Integer
    from cacheness.sql import SqlCache, sql_fetcher

    prices = SqlCache.for_timeseries(
        "sqlite:///prices.db", table_name="prices",
        key_columns=["symbol"], time_column="date", time_increment=timedelta(days=1),
        data_fetcher=fetch_prices, ttl_seconds=86400, price=Float, volume=Integer)
    df = prices.get_data(symbol="AAPL", start_date="2024-01-01", end_date="2024-03-31")

Each request fetches only what the coverage ledger does not already hold
(unexpired), merges adjacent gaps, and upserts the rows in one transaction
with the ledger. ``sql_fetcher`` makes a fetcher from a query on another
database, for a remote-to-local pull-through.
"""

from __future__ import annotations

from cacheness.sql._cache import GapDetector, SqlCache
from cacheness.sql._errors import SchemaMismatchError
from cacheness.sql._fetchers import SqlFetcher, sql_fetcher

__all__ = [
    "GapDetector",
    "SchemaMismatchError",
    "SqlCache",
    "SqlFetcher",
    "sql_fetcher",
]
