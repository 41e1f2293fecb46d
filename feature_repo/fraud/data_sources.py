"""Offline sources: hourly per-entity snapshots written by `feature_pipelines aggregate`.

A snapshot at hour H aggregates only events strictly before H, so a point-in-time join that
picks the latest snapshot at or before a transaction never lets the transaction (or anything
later) leak into its own features. Paths are anchored to this folder (not to the working
directory), so `feast apply` gives the same sources wherever it is run from.
"""

from pathlib import Path

from feast import FileSource

DATA = Path(__file__).resolve().parent / "data"

ip_features_source = FileSource(
    name="ip_features_source",
    path=str(DATA / "ip_features.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Hourly IP address aggregates.",
)

card_features_source = FileSource(
    name="card_features_source",
    path=str(DATA / "card_features.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Hourly card aggregates.",
)

merchant_features_source = FileSource(
    name="merchant_features_source",
    path=str(DATA / "merchant_features.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Hourly merchant aggregates.",
)
