"""Point-in-time retrieval through a FeatureService: training sets and offline scoring alike.

Feast's ``get_historical_features`` joins, for each row of the entity dataframe, the latest row
of each feature view at or before the row's time and within the view's TTL; on-demand views are
computed per row from the request columns of the entity dataframe, as the service computes them
per request.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from feast import FeatureStore

from feature_repo.layout import feature_layout

logger = logging.getLogger(__name__)


def retrieve(
    store: FeatureStore,
    feature_service: str,
    entity_df: pd.DataFrame,
    sort_by: list[str] | None = None,
) -> pd.DataFrame:
    """Point-in-time join of the FeatureService's features onto the entity dataframe.

    Features missing for a row (unknown entity, or no row within the TTL) are NaN; every
    feature column is float64. Rows come back sorted by ``sort_by`` (default: event time).
    """
    service = store.get_feature_service(feature_service)
    logger.info("retrieving %d rows through feature service %s", len(entity_df), feature_service)
    frame = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    layout = feature_layout(store, feature_service)
    for name in layout.stored_features + layout.on_demand_features:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame.sort_values(sort_by or ["event_timestamp"], kind="stable").reset_index(drop=True)


def feature_matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """The model's float32 input matrix, columns in model order, missing as NaN."""
    return frame[features].to_numpy(dtype=np.float32, na_value=np.nan)
