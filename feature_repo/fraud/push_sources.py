"""Push sources: where the stream consumer writes fresh per-event aggregates.

Each push source is backed by a parquet table (its batch source). A push with
``PushMode.ONLINE_AND_OFFLINE`` updates the online store for serving and appends the same rows
to that table for training; ``feature_pipelines replay`` writes the table in bulk for a
history. Rows are stamped a few microseconds after their event (see
``feature_pipelines.streaming.windows``), so a transaction's point-in-time join never sees its
own row. The table's source class follows the offline store in use, as in ``data_sources``;
pushes go through the default yaml's store (the Spark yaml serves training and materialization).
"""

from pathlib import Path

from feast import PushSource

from feature_repo.sources import parquet_source

REPO = Path(__file__).resolve().parent
DATA = REPO / "data"

ip_stream_table = parquet_source(
    REPO,
    name="ip_stream_table",
    path=DATA / "ip_stream_features.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Per-event IP address window aggregates (replayed history + live appends).",
)

card_stream_table = parquet_source(
    REPO,
    name="card_stream_table",
    path=DATA / "card_stream_features.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description="Per-event card window aggregates (replayed history + live appends).",
)

ip_stream_push = PushSource(
    name="ip_stream_push",
    batch_source=ip_stream_table,
    description="Fresh IP address aggregates pushed by the stream consumer.",
)

card_stream_push = PushSource(
    name="card_stream_push",
    batch_source=card_stream_table,
    description="Fresh card aggregates pushed by the stream consumer.",
)
