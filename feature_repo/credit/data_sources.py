"""Offline sources: parquet tables written by ``python -m feature_pipelines credit load``.

The loader reads Feast's credit-scoring tutorial data (``feature_pipelines/credit/source_data``),
cleans it and writes it here with UTC timestamps. Paths are anchored to this folder (not to the
working directory), so `feast apply` gives the same sources wherever it is run from.
"""

from pathlib import Path

from feast import FileSource

DATA = Path(__file__).resolve().parent / "data"

zipcode_source = FileSource(
    name="zipcode_source",
    path=str(DATA / "zipcode_features.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Tax-return statistics per ZIP code (one snapshot, 2017-01-01).",
)

credit_history_source = FileSource(
    name="credit_history_source",
    path=str(DATA / "credit_history.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Credit bureau history per person (a sample: most applicants have none).",
)
