"""Training-set retrieval: point-in-time correct features for labelled transactions.

What a data scientist runs (``python -m models dataset``) and what ``train`` uses: labelled
transactions become Feast's entity dataframe, and ``get_historical_features`` joins, for each
transaction, the latest snapshot of each feature view at or before the transaction's time and
within the view's TTL, through the model's FeatureService.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pandas as pd
from feast import FeatureStore

from feature_repo.layout import FeatureLayout, OnDemandLayout, feature_layout, open_store
from feature_repo.retrieval import feature_matrix, retrieve

__all__ = [
    "FeatureLayout",
    "OnDemandLayout",
    "entity_dataframe",
    "feature_layout",
    "feature_matrix",
    "load_transactions",
    "open_store",
    "retrieve_training_set",
]

logger = logging.getLogger(__name__)

# Business request field -> Feast join key. Declared once here and written into every model
# package, so serving maps a transaction to entities from the package, not from code.
ENTITY_MAPPING: dict[str, str] = {
    "ip_address": "ip_address",
    "card_id": "card_id",
    "merchant_id": "merchant_id",
}
# Request-time values used directly as model inputs.
REQUEST_FEATURES: list[str] = ["amount"]
LABEL_COLUMN = "is_fraud"


def load_transactions(path: Path) -> pd.DataFrame:
    """Read generated (or real) transactions from parquet."""
    frame = pd.read_parquet(path)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame


def entity_dataframe(
    transactions: pd.DataFrame,
    start: datetime | None = None,
    end: datetime | None = None,
    request_fields: list[str] | None = None,
) -> pd.DataFrame:
    """Labelled transactions in [start, end) as Feast's entity dataframe.

    ``request_fields`` adds the request columns that on-demand views read (``FeatureLayout.
    request_fields``): Feast computes them per row from these, as the service does per request.
    """
    columns = list(
        dict.fromkeys(
            [
                "transaction_id",
                "event_timestamp",
                *ENTITY_MAPPING,
                *REQUEST_FEATURES,
                *(request_fields or []),
                LABEL_COLUMN,
            ]
        )
    )
    frame = transactions[columns].copy()
    if start is not None:
        frame = frame[frame["event_timestamp"] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame["event_timestamp"] < pd.Timestamp(end)]
    rename = {field: key for field, key in ENTITY_MAPPING.items() if field != key}
    return frame.rename(columns=rename).reset_index(drop=True)


def retrieve_training_set(
    store: FeatureStore, feature_service: str, entity_df: pd.DataFrame
) -> pd.DataFrame:
    """Point-in-time training set, sorted by event time then transaction id."""
    return retrieve(
        store, feature_service, entity_df, sort_by=["event_timestamp", "transaction_id"]
    )
