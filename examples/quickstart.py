"""cacheness quickstart: SQLite + local files, no server.

Run it from a fresh clone with the one command in the README.
"""

from __future__ import annotations

import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from cacheness import cached, cacheness
from cacheness.storage import BlobStore

workdir = Path(tempfile.mkdtemp(prefix="cacheness-quickstart-"))

# 1. The decorator: results persist across runs, keyed by the arguments.
cache = cacheness(cache_dir=workdir / "cache", default_ttl_seconds=3600)


@cached(cache_instance=cache)
def load_prices(symbol: str, days: int = 250) -> pd.DataFrame:
    time.sleep(0.5)  # stands in for a slow download or query
    rng = np.random.default_rng(zlib.crc32(symbol.encode()))
    return pd.DataFrame(
        {
            "day": pd.date_range("2024-01-01", periods=days, tz="UTC"),
            "price": rng.normal(100, 5, days),
        }
    )


t0 = time.perf_counter()
first = load_prices("AAPL")
t1 = time.perf_counter()
again = load_prices(symbol="AAPL")  # same call spelt differently: a hit
t2 = time.perf_counter()
assert again.equals(first)
print(f"miss {t1 - t0:.3f} s, hit {t2 - t1:.4f} s, info {load_prices.cache_info()}")

# 2. The cache directly: any object, keyed by keyword arguments.
weights = np.random.default_rng(0).normal(size=(1000, 100))
cache.put(weights, model="ridge", version="1.0", metadata={"rmse": 0.42})
assert np.array_equal(cache.get(model="ridge", version="1.0"), weights)
print("stats", cache.stats())
cache.close()

# 3. The blob store alone: content-addressed artifacts with metadata.
with BlobStore(workdir / "artifacts") as store:
    store.put(weights, key="models/ridge/1.0", metadata={"stage": "prod"})
    store.put(weights, key="models/ridge/latest")  # same content: stored once
    print("artifacts", store.list(prefix="models/"), store.list(metadata_filter={"stage": "prod"}))
    print("verify ok:", store.verify().ok)
