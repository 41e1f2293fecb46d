"""Online feature client: entity keys in, an ordered float32 matrix and per-entity status out.

The reader serves one layout (feature views, join keys, TTLs and features in model order). The
status rule (present, stale, missing) and the assembly of the vector live in
``feature_repo.online``, shared with the fast Redis reader, batch scoring and the skew check.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from typing import Protocol

from feast import FeatureStore

from feature_repo import clock
from feature_repo.online import (
    MISSING,
    NOT_REQUESTED,
    PRESENT,
    STALE,
    STATUS_NAMES,
    FeatureBatch,
    Row,
    StoreLayout,
    ViewLayout,
    assemble,
    requested_index,
)
from scoring_service.core.errors import FeatureStoreUnavailable

__all__ = [
    "MISSING",
    "NOT_REQUESTED",
    "PRESENT",
    "STALE",
    "STATUS_NAMES",
    "STORE_ERRORS",
    "FeastOnlineReader",
    "FeatureBatch",
    "OnlineFeatureReader",
    "StoreLayout",
    "ViewLayout",
]

logger = logging.getLogger(__name__)


class OnlineFeatureReader(Protocol):
    """What the scorer needs from an online store."""

    layout: StoreLayout

    def read(self, keys: dict[str, list[str | None]]) -> FeatureBatch:
        """Features for n requests; keys maps join key -> n values (None: not requested)."""
        ...

    def ping(self) -> None:
        """Raise FeatureStoreUnavailable when the store cannot be read."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _store_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.exceptions.RedisError, sqlite3.Error, OSError, TimeoutError)


STORE_ERRORS = _store_errors()


class FeastOnlineReader:
    """Reads through Feast's SDK: works on every online store Feast supports (SQLite, Redis)."""

    def __init__(self, store: FeatureStore, layout: StoreLayout) -> None:
        self.store = store
        self.layout = layout

    def read(self, keys: dict[str, list[str | None]]) -> FeatureBatch:
        """One SDK call per feature view, for the requests that carry that view's key."""
        reads: dict[str, tuple[list[int], list[Row]]] = {}
        n = len(next(iter(keys.values()))) if keys else 0
        try:
            for view in self.layout.views:
                wanted = [k for k in keys[view.join_key] if k is not None]
                if not wanted:
                    continue
                response = self.store.get_online_features(
                    features=[f"{view.name}:{f}" for f in view.features],
                    entity_rows=[{view.join_key: k} for k in wanted],
                ).to_dict(include_event_timestamps=True)
                columns = [response[f] for f in view.features]
                stamps = response[f"{view.features[0]}__ts"]
                # Feast reports a zero timestamp for keys it has no row for.
                rows: list[Row] = [
                    (math.nan if stamp == 0 else float(stamp), list(values))
                    for stamp, values in zip(stamps, zip(*columns, strict=True), strict=True)
                ]
                reads[view.name] = (requested_index(keys[view.join_key]), rows)
        except STORE_ERRORS as exc:
            raise FeatureStoreUnavailable(
                "The online feature store cannot be read right now; retry shortly."
            ) from exc
        return assemble(self.layout, n, reads, clock.time())

    def ping(self) -> None:
        """A real read of one key through the same path."""
        self.read({v.join_key: ["__readiness_probe__"] for v in self.layout.views})

    def close(self) -> None:
        """Feast owns its connections; nothing to release."""
