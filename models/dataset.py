"""Training-set retrieval: point-in-time correct features for labelled business events.

What a data scientist runs (``python -m models dataset``) and what ``train`` uses: the domain's
labelled events (its ``training_data``: the business objects with their request fields, label
and event time) become Feast's entity dataframe, and ``get_historical_features`` joins, for each
event, the latest row of each feature view at or before the event's time and within the view's
TTL, through the model's FeatureService. Which columns are entity keys, request values, label
and time comes from the domain file (``feature_repo/<domain>/domain.yaml``), not from code.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pandas as pd
from feast import FeatureStore

from feature_repo.domain import DomainSpec
from feature_repo.layout import FeatureLayout, OnDemandLayout, feature_layout, open_store
from feature_repo.retrieval import feature_matrix, retrieve

__all__ = [
    "EVENT_TIMESTAMP",
    "FeatureLayout",
    "OnDemandLayout",
    "entity_dataframe",
    "feature_layout",
    "feature_matrix",
    "load_events",
    "open_store",
    "retrieve_training_set",
]

logger = logging.getLogger(__name__)

# Event-time column of Feast's entity dataframe (and of every retrieved training set).
EVENT_TIMESTAMP = "event_timestamp"


def load_events(path: Path, spec: DomainSpec) -> pd.DataFrame:
    """Read labelled business events from parquet, event times in UTC."""
    frame = pd.read_parquet(path)
    frame[spec.timestamp_field] = pd.to_datetime(frame[spec.timestamp_field], utc=True)
    return frame


def entity_dataframe(
    events: pd.DataFrame,
    spec: DomainSpec,
    start: datetime | None = None,
    end: datetime | None = None,
    request_fields: list[str] | None = None,
) -> pd.DataFrame:
    """Labelled events in [start, end) as Feast's entity dataframe.

    Columns: the business id, the event time (as ``event_timestamp``), the entity keys (renamed
    to their join keys), the request features, the request columns that on-demand views read
    (``FeatureLayout.request_fields``: Feast computes them per row from these, as the service
    does per request) and the label.
    """
    columns = list(
        dict.fromkeys(
            [
                spec.business_id,
                spec.timestamp_field,
                *spec.entity_mapping,
                *spec.request_features,
                *(request_fields or []),
                spec.label_column,
            ]
        )
    )
    lacking = [c for c in columns if c not in events.columns]
    if lacking:
        raise ValueError(f"the {spec.name} training data lacks column(s) {lacking}")
    frame = events[columns].copy()
    times = frame[spec.timestamp_field]
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= times >= pd.Timestamp(start)
    if end is not None:
        keep &= times < pd.Timestamp(end)
    frame = frame[keep]
    rename = {field: key for field, key in spec.entity_mapping.items() if field != key}
    rename[spec.timestamp_field] = EVENT_TIMESTAMP
    return frame.rename(columns=rename).reset_index(drop=True)


def retrieve_training_set(
    store: FeatureStore, feature_service: str, entity_df: pd.DataFrame, spec: DomainSpec
) -> pd.DataFrame:
    """Point-in-time training set, sorted by event time then business id."""
    return retrieve(store, feature_service, entity_df, sort_by=[EVENT_TIMESTAMP, spec.business_id])
