"""Offline sources: hourly per-entity snapshots written by `feature_pipelines aggregate`.

A snapshot at hour H aggregates only events strictly before H, so a point-in-time join that
picks the latest snapshot at or before a transaction never lets the transaction (or anything
later) leak into its own features. Paths are anchored to this folder (not to the working
directory), so `feast apply` gives the same sources wherever it is run from. The source class
follows the offline store of the yaml in use (`feature_repo.sources`): the same parquet files
are read by DuckDB (`feature_store.yaml`) and by Spark (`feature_store.spark.yaml`).
"""

from pathlib import Path

from feature_repo.sources import parquet_source

REPO = Path(__file__).resolve().parent
DATA = REPO / "data"

ip_features_source = parquet_source(
    REPO,
    name="ip_features_source",
    path=DATA / "ip_features.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Hourly IP address aggregates.",
)

card_features_source = parquet_source(
    REPO,
    name="card_features_source",
    path=DATA / "card_features.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Hourly card aggregates.",
)

merchant_features_source = parquet_source(
    REPO,
    name="merchant_features_source",
    path=DATA / "merchant_features.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Hourly merchant aggregates.",
)
