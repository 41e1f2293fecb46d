"""Streaming feature views: minute-scale windows per IP address and per card.

Fed through push sources by the stream consumer (``python -m feature_pipelines stream``).
Each row describes the windows ``(t - w, t]`` ending at one event ``t``, including it, and is
stamped just after ``t`` (``t + 1 µs`` unless events tie), so a transaction never sees its own.
The TTL equals the longest window: an hour after an entity's last event every window of its
row has expired, so the row is withheld (NaN) in training and serving alike.

Plain ``FeatureView``s over a ``PushSource`` rather than ``StreamFeatureView``s: the windows are
computed by our consumer (idempotently, see ``feature_pipelines.streaming``; the catalogue is
``feature_pipelines/fraud/windows.py``), not by a Feast stream engine, and plain views are what
the registry lookups of training and serving expect.

Tagged ``evidence: optional``: a quiet entity has no streaming row, and that says nothing about
whether the entity is known; its status comes from its batch view (``feature_repo.online``).
"""

from datetime import timedelta

from entities import card, ip_address
from feast import FeatureView, Field
from feast.types import Float64, Int64
from push_sources import card_stream_push, ip_stream_push

ip_stream_features = FeatureView(
    name="ip_stream_features",
    entities=[ip_address],
    ttl=timedelta(hours=1),
    schema=[
        Field(name="ip_rt_txn_count_5m", dtype=Int64),
        Field(name="ip_rt_txn_count_1h", dtype=Int64),
        Field(name="ip_rt_amount_sum_5m", dtype=Float64),
        Field(name="ip_rt_amount_sum_1h", dtype=Float64),
        Field(name="ip_rt_distinct_cards_10m", dtype=Int64),
    ],
    online=True,
    source=ip_stream_push,
    tags={"team": "fraud", "entity": "ip_address", "freshness": "stream", "evidence": "optional"},
)

card_stream_features = FeatureView(
    name="card_stream_features",
    entities=[card],
    ttl=timedelta(hours=1),
    schema=[
        Field(name="card_rt_txn_count_5m", dtype=Int64),
        Field(name="card_rt_txn_count_1h", dtype=Int64),
        Field(name="card_rt_amount_sum_5m", dtype=Float64),
        Field(name="card_rt_amount_sum_1h", dtype=Float64),
        Field(name="card_rt_small_txn_count_1h", dtype=Int64),
        Field(name="card_rt_distinct_ips_10m", dtype=Int64),
    ],
    online=True,
    source=card_stream_push,
    tags={"team": "fraud", "entity": "card_id", "freshness": "stream", "evidence": "optional"},
)
