"""Custom-metadata models shared by the tests and their worker processes.

Loaded by path (``load_models()``) so a worker and the test process define the
same tables; registering runs once per process.
"""

from __future__ import annotations

import sqlalchemy as sa
from cacheness import CustomMetadataBase, custom_metadata_model
from sqlalchemy.orm import Mapped, mapped_column


@custom_metadata_model("ml_experiments")
class MLExperiment(CustomMetadataBase):
    __tablename__ = "cm_ml_experiments"

    model_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    accuracy: Mapped[float] = mapped_column(sa.Float, nullable=False)
    run_name: Mapped[str | None] = mapped_column(sa.String(100), unique=True)


@custom_metadata_model("datasets")
class Dataset(CustomMetadataBase):
    __tablename__ = "cm_datasets"

    name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    rows: Mapped[int] = mapped_column(sa.Integer, nullable=False)
