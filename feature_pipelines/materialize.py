"""Materialization: copy the latest feature values from the offline store into the online store.

Incremental by default: Feast remembers, per feature view, up to when it has materialized, and
loads only newer snapshots (the first run starts at each view's TTL before the end). Progress
bars come from Feast itself.

Incremental loading assumes the offline history only grows. When it was rewritten instead (the
synthetic history regenerated relative to a new "now"), rows already online may be newer than
the rewritten rows for the same entity, and Feast's writers keep the newer row: the online store
would silently disagree with the offline history. ``rebuild`` empties each view's online rows and
loads, per view, every entity's latest row of its TTL window before the end, so the online store
is exactly what a point-in-time read of the history at the end returns.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from feast import FeatureStore

from feature_repo import clock

logger = logging.getLogger(__name__)


def materialize(
    repo_path: Path,
    end: datetime | None = None,
    start: datetime | None = None,
    yaml_path: Path | None = None,
    views: list[str] | None = None,
    rebuild: bool = False,
) -> datetime:
    """Materialize up to ``end`` (default now); a full reload of [start, end] when start is set,
    or the online store rebuilt from the history (``rebuild``, see the module docstring)."""
    end = end or clock.now()
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    store = (
        FeatureStore(repo_path=str(repo_path), fs_yaml_file=Path(yaml_path))
        if yaml_path
        else FeatureStore(repo_path=str(repo_path))
    )
    if rebuild:
        _rebuild(store, end, views)
    elif start is None:
        logger.info("incremental materialization up to %s", end.isoformat())
        store.materialize_incremental(end_date=end, feature_views=views)
    else:
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        logger.info("materializing %s .. %s", start.isoformat(), end.isoformat())
        store.materialize(start_date=start, end_date=end, feature_views=views)
    return end


def _rebuild(store: FeatureStore, end: datetime, views: list[str] | None) -> None:
    """Empty the views' online rows, then load each view's TTL window before ``end``."""
    chosen = [fv for fv in store.list_feature_views() if views is None or fv.name in views]
    missing = set(views or ()) - {fv.name for fv in chosen}
    if missing:
        raise ValueError(f"no such feature view in the registry: {', '.join(sorted(missing))}")
    provider = store._get_provider()
    entities = store.list_entities()
    # Two steps: stores create kept tables before dropping deleted ones in a single call.
    provider.update_infra(store.project, chosen, [], [], entities, partial=True)
    provider.update_infra(store.project, [], chosen, [], entities, partial=True)
    for view in chosen:
        window = view.ttl if view.ttl and view.ttl > timedelta(0) else timedelta(weeks=52)
        logger.info("rebuilding %s from %s", view.name, (end - window).isoformat())
        store.materialize(start_date=end - window, end_date=end, feature_views=[view.name])
