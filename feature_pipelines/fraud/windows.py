"""Streaming features of payment fraud: minute-scale windows per IP address and per card.

The catalogue the shared stream machinery (``feature_pipelines.streaming``) runs for fraud:
the live consumer (``python -m feature_pipelines stream``) and ``replay`` compute these windows
over transaction events and write them to the push sources of ``ip_stream_features`` and
``card_stream_features`` (``feature_repo/fraud/stream_features.py``, the source of truth for
their names and types; ``tests/feature_pipelines/fraud/test_feature_lists.py`` holds this
catalogue equal to them). Amounts are summed in integer cents.
"""

from __future__ import annotations

from typing import Final

from feature_pipelines.fraud import schema
from feature_pipelines.streaming.windows import (
    HOUR_US,
    MINUTE_US,
    StreamKind,
    WindowCatalogue,
    WindowFeature,
)

#: Key prefix of the fraud window state in Redis.
STATE_PREFIX: Final = "fraud:rt"

CATALOGUE: Final = WindowCatalogue(
    kinds=(
        StreamKind(
            name="ip",
            join_key=schema.IP_JOIN_KEY,
            counterpart=schema.CARD_ID,
            view="ip_stream_features",
            push_source="ip_stream_push",
            table_file="ip_stream_features.parquet",
            features=(
                WindowFeature("ip_rt_txn_count_5m", "count", 5 * MINUTE_US),
                WindowFeature("ip_rt_txn_count_1h", "count", HOUR_US),
                WindowFeature("ip_rt_amount_sum_5m", "sum", 5 * MINUTE_US),
                WindowFeature("ip_rt_amount_sum_1h", "sum", HOUR_US),
                WindowFeature("ip_rt_distinct_cards_10m", "distinct", 10 * MINUTE_US),
            ),
        ),
        StreamKind(
            name="card",
            join_key=schema.CARD_JOIN_KEY,
            counterpart=schema.IP_ADDRESS,
            view="card_stream_features",
            push_source="card_stream_push",
            table_file="card_stream_features.parquet",
            features=(
                WindowFeature("card_rt_txn_count_5m", "count", 5 * MINUTE_US),
                WindowFeature("card_rt_txn_count_1h", "count", HOUR_US),
                WindowFeature("card_rt_amount_sum_5m", "sum", 5 * MINUTE_US),
                WindowFeature("card_rt_amount_sum_1h", "sum", HOUR_US),
                WindowFeature(
                    "card_rt_small_txn_count_1h",
                    "count_below",
                    HOUR_US,
                    below=schema.SMALL_AMOUNT_THRESHOLD,
                ),
                WindowFeature("card_rt_distinct_ips_10m", "distinct", 10 * MINUTE_US),
            ),
        ),
    ),
    id_field=schema.TRANSACTION_ID,
    value_field=schema.AMOUNT,
    value_scale=100,
)
