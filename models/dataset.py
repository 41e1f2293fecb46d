"""Training-set retrieval: point-in-time correct features for labelled transactions.

What a data scientist runs (``python -m models dataset``) and what ``train`` uses: labelled
transactions become Feast's entity dataframe, and ``get_historical_features`` joins, for each
transaction, the latest snapshot of each feature view at or before the transaction's time and
within the view's TTL, through the model's FeatureService.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureStore

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


@dataclass(frozen=True)
class OnDemandLayout:
    """An on-demand feature view of a FeatureService: what it needs and what it computes."""

    request_fields: list[str]  # fields of its request sources
    source_views: list[str]  # feature views it reads
    features: list[str]  # outputs the service selects, in model order


@dataclass(frozen=True)
class FeatureLayout:
    """The feature views of a FeatureService, in the order the model reads them."""

    feature_service: str
    views: dict[str, tuple[str, int | None, list[str]]]  # view -> (join key, ttl s, features)
    on_demand: dict[str, OnDemandLayout] = field(default_factory=dict)

    @property
    def stored_features(self) -> list[str]:
        """Stored feature names in model order."""
        return [f for _, _, feats in self.views.values() for f in feats]

    @property
    def on_demand_features(self) -> list[str]:
        """On-demand feature names in model order (after the stored ones)."""
        return [f for view in self.on_demand.values() for f in view.features]

    @property
    def request_fields(self) -> list[str]:
        """Request fields the on-demand views need (columns of the entity dataframe)."""
        return list(dict.fromkeys(f for v in self.on_demand.values() for f in v.request_fields))


def open_store(repo_path: Path, yaml_path: Path | None = None) -> FeatureStore:
    """Open the Feast feature store of a repository (optionally with another yaml)."""
    if yaml_path is not None:
        return FeatureStore(repo_path=str(repo_path), fs_yaml_file=Path(yaml_path))
    return FeatureStore(repo_path=str(repo_path))


def feature_layout(store: FeatureStore, feature_service: str) -> FeatureLayout:
    """Read a FeatureService's views, join keys, TTLs and features from the registry."""
    service = store.get_feature_service(feature_service)
    views: dict[str, tuple[str, int | None, list[str]]] = {}
    on_demand: dict[str, OnDemandLayout] = {}
    on_demand_names = {v.name for v in store.list_on_demand_feature_views(allow_cache=True)}
    for projection in service.feature_view_projections:
        if projection.name in on_demand_names:
            odfv = store.get_on_demand_feature_view(projection.name)
            on_demand[projection.name_to_use()] = OnDemandLayout(
                request_fields=[
                    f.name for source in odfv.source_request_sources.values() for f in source.schema
                ],
                source_views=sorted(p.name for p in odfv.source_feature_view_projections.values()),
                features=[feature.name for feature in projection.features],
            )
            continue
        view = store.get_feature_view(projection.name)
        join_keys = [column.name for column in view.entity_columns]
        if len(join_keys) != 1:
            raise ValueError(f"feature view {view.name} must have exactly one join key")
        ttl = int(view.ttl.total_seconds()) if view.ttl else None
        views[projection.name_to_use()] = (
            join_keys[0],
            ttl,
            [feature.name for feature in projection.features],
        )
    return FeatureLayout(feature_service=feature_service, views=views, on_demand=on_demand)


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
    """Point-in-time join of the FeatureService's features onto the entity dataframe.

    Rows come back sorted by event time; features missing for a row (unknown entity, or no
    snapshot within the TTL) are NaN.
    """
    service = store.get_feature_service(feature_service)
    logger.info("retrieving %d rows through feature service %s", len(entity_df), feature_service)
    job = store.get_historical_features(entity_df=entity_df, features=service)
    frame = job.to_df()
    layout = feature_layout(store, feature_service)
    for name in layout.stored_features + layout.on_demand_features:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame.sort_values(["event_timestamp", "transaction_id"]).reset_index(drop=True)


def feature_matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """The model's float32 input matrix, columns in model order, missing as NaN."""
    return frame[features].to_numpy(dtype=np.float32, na_value=np.nan)
