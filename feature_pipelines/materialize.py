"""Materialization: copy the latest feature values from the offline store into the online store.

Incremental by default: Feast remembers, per feature view, up to when it has materialized, and
loads only newer snapshots (the first run starts at each view's TTL before the end). Progress
bars come from Feast itself.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from feast import FeatureStore

logger = logging.getLogger(__name__)


def materialize(
    repo_path: Path,
    end: datetime | None = None,
    start: datetime | None = None,
    yaml_path: Path | None = None,
    views: list[str] | None = None,
) -> datetime:
    """Materialize up to ``end`` (default now); a full reload of [start, end] when start is set."""
    end = end or datetime.now(UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    store = (
        FeatureStore(repo_path=str(repo_path), fs_yaml_file=Path(yaml_path))
        if yaml_path
        else FeatureStore(repo_path=str(repo_path))
    )
    if start is None:
        logger.info("incremental materialization up to %s", end.isoformat())
        store.materialize_incremental(end_date=end, feature_views=views)
    else:
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        logger.info("materializing %s .. %s", start.isoformat(), end.isoformat())
        store.materialize(start_date=start, end_date=end, feature_views=views)
    return end
