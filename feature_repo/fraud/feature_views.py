"""Feature views: one per entity, read by training (offline) and serving (online).

TTLs say how long a snapshot stays usable. Snapshots are written only after an hour with
activity, so a quiet IP keeps its last snapshot; past the TTL the service treats the entity's
features as stale and the label policy may answer `uncertain`.
"""

from datetime import timedelta

from data_sources import card_features_source, ip_features_source, merchant_features_source
from entities import card, ip_address, merchant
from feast import FeatureView, Field
from feast.types import Float64, Int64

ip_features = FeatureView(
    name="ip_features",
    entities=[ip_address],
    ttl=timedelta(days=14),
    schema=[
        Field(name="ip_txn_count_1h", dtype=Int64),
        Field(name="ip_txn_count_24h", dtype=Int64),
        Field(name="ip_txn_count_7d", dtype=Int64),
        Field(name="ip_distinct_cards_24h", dtype=Int64),
        Field(name="ip_amount_mean_7d", dtype=Float64),
        Field(name="ip_chargeback_count_30d", dtype=Int64),
        Field(name="ip_fraud_rate_30d", dtype=Float64),
    ],
    online=True,
    source=ip_features_source,
    tags={"team": "fraud", "entity": "ip_address"},
)

card_features = FeatureView(
    name="card_features",
    entities=[card],
    ttl=timedelta(days=30),
    schema=[
        Field(name="card_txn_count_1h", dtype=Int64),
        Field(name="card_txn_count_24h", dtype=Int64),
        Field(name="card_txn_count_7d", dtype=Int64),
        Field(name="card_amount_mean_30d", dtype=Float64),
        Field(name="card_amount_max_30d", dtype=Float64),
        Field(name="card_distinct_ips_24h", dtype=Int64),
        Field(name="card_distinct_countries_24h", dtype=Int64),
        Field(name="card_small_txn_count_24h", dtype=Int64),
    ],
    online=True,
    source=card_features_source,
    tags={"team": "fraud", "entity": "card_id"},
)

merchant_features = FeatureView(
    name="merchant_features",
    entities=[merchant],
    ttl=timedelta(days=7),
    schema=[
        Field(name="merchant_txn_count_24h", dtype=Int64),
        Field(name="merchant_txn_count_7d", dtype=Int64),
        Field(name="merchant_amount_mean_7d", dtype=Float64),
        Field(name="merchant_chargeback_count_30d", dtype=Int64),
        Field(name="merchant_fraud_rate_30d", dtype=Float64),
    ],
    online=True,
    source=merchant_features_source,
    tags={"team": "fraud", "entity": "merchant_id"},
)
