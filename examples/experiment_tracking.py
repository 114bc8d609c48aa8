"""Experiment tracking with custom metadata: typed, queryable columns on cache entries.

Each trained model is cached under its hyper-parameters, and a row of the
``ml_experiments`` table (a SQLAlchemy model) is stored with it, in the same
transaction. Queries then find the cached models by their results. SQLite,
no server; for a team, pass ``metadata_backend="postgresql+psycopg://..."``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from cacheness import CustomMetadataBase, cacheness, custom_metadata_model
from sqlalchemy import Float, String
from sqlalchemy.orm import Mapped, mapped_column


@custom_metadata_model("ml_experiments")
class MLExperiment(CustomMetadataBase):
    __tablename__ = "ml_experiments"

    model_type: Mapped[str] = mapped_column(String(50), index=True)
    alpha: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float] = mapped_column(Float, index=True)


def train(model_type: str, alpha: float, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """A ridge classifier on polynomial or linear features (stands in for real training)."""
    feats = np.hstack([x, x**2]) if model_type == "poly" else x
    feats = np.hstack([feats, np.ones((len(x), 1))])
    w = np.linalg.solve(feats.T @ feats + alpha * np.eye(feats.shape[1]), feats.T @ y)
    accuracy = float(np.mean((feats @ w > 0.5) == (y > 0.5)))
    return w, accuracy


rng = np.random.default_rng(0)
x = rng.normal(size=(2000, 4))
y = (x[:, 0] ** 2 + x[:, 1] > 1.0).astype(float)

workdir = tempfile.TemporaryDirectory(prefix="cacheness-experiments-")
with cacheness(cache_dir=Path(workdir.name) / "cache") as cache:
    # 1. Train a small grid; each result is cached with a row describing it.
    for model_type in ("linear", "poly"):
        for alpha in (0.01, 1.0, 100.0):
            weights, accuracy = train(model_type, alpha, x, y)
            cache.put(
                weights,
                model_type=model_type,
                alpha=alpha,
                custom_metadata={
                    "ml_experiments": MLExperiment(
                        model_type=model_type, alpha=alpha, accuracy=accuracy
                    )
                },
            )

    # 2. Equality filters: a list of detached rows (the session is already closed).
    poly = cache.query_custom("ml_experiments", {"model_type": "poly"})
    print(f"poly runs: {len(poly)}")

    # 3. Any SQLAlchemy query, in a session that closes even if the block raises.
    with cache.query_custom_session("ml_experiments") as query:
        best = query.order_by(MLExperiment.accuracy.desc()).first()
        good = query.filter(MLExperiment.accuracy >= 0.8).count()
    assert best is not None
    print(f"best: {best.model_type} alpha={best.alpha} accuracy={best.accuracy:.3f}")
    print(f"runs with accuracy >= 0.8: {good}")

    # 4. Each row links to its entry: load the best model's weights.
    weights = cache.get(cache_key=best.cache_key)
    print(f"best model: {len(weights)} weights, largest {np.abs(weights).max():.2f}")
    meta = cache.get_custom_metadata(model_type="linear", alpha=1.0)
    assert meta is not None
    print(f"linear alpha=1.0 accuracy: {meta['ml_experiments'].accuracy:.3f}")

    # 5. Removing an entry removes its row.
    cache.invalidate(model_type="poly", alpha=100.0)
    left = cache.query_custom("ml_experiments", {"model_type": "poly"})
    print(f"poly runs after invalidating one: {len(left)}")
    print(f"connections checked out: {cache.get_pool_stats()['checked_out']}")
workdir.cleanup()
