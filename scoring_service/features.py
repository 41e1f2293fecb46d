"""Online feature client: entity keys in, an ordered float32 matrix and per-entity status out.

The reader serves one model's layout (its feature views, join keys, TTLs and features in model
order). A feature view's row is *present* when the store has it within the view's TTL, *stale*
when it is older (its values are then withheld as NaN, exactly as Feast's point-in-time join
withholds them in training) and *missing* when the store has no row for the key.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from feast import FeatureStore

from scoring_service.errors import FeatureStoreUnavailable

logger = logging.getLogger(__name__)

PRESENT, MISSING, STALE, NOT_REQUESTED = 0, 1, 2, 3
STATUS_NAMES = {
    PRESENT: "present",
    MISSING: "missing",
    STALE: "stale",
    NOT_REQUESTED: "not_requested",
}


@dataclass(frozen=True)
class ViewLayout:
    """One feature view as the model reads it."""

    name: str
    join_key: str
    ttl_seconds: int | None
    features: list[str]
    offset: int  # first column of this view in the model's stored-feature block


@dataclass(frozen=True)
class StoreLayout:
    """All views of a model, in model order."""

    views: list[ViewLayout]

    @property
    def width(self) -> int:
        """Number of stored features."""
        return sum(len(v.features) for v in self.views)

    @classmethod
    def from_views(cls, views: dict[str, tuple[str, int | None, list[str]]]) -> StoreLayout:
        """Build from {view: (join key, ttl seconds, features)} in model order."""
        out, offset = [], 0
        for name, (key, ttl, feats) in views.items():
            out.append(ViewLayout(name, key, ttl, list(feats), offset))
            offset += len(feats)
        return cls(out)


@dataclass
class FeatureBatch:
    """Stored features for n requests."""

    values: np.ndarray  # float32 [n, width], NaN where missing or stale
    status: dict[str, np.ndarray] = field(default_factory=dict)  # join key -> int8 [n]
    age_seconds: dict[str, np.ndarray] = field(default_factory=dict)  # join key -> float64 [n]
    # join key -> event time in epoch seconds, float64 [n]; NaN when missing or not requested
    event_timestamp: dict[str, np.ndarray] = field(default_factory=dict)


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


def assemble(
    layout: StoreLayout,
    keys: dict[str, list[str | None]],
    per_view: dict[str, tuple[list[list[float | None]], list[float | None]]],
    now: float,
) -> FeatureBatch:
    """Turn raw per-view reads into the model matrix and statuses.

    per_view maps view name -> (rows of feature values in view order, event time in epoch
    seconds or None) for the requests whose key was given, in request order.
    """
    n = len(next(iter(keys.values()))) if keys else 0
    values = np.full((n, layout.width), np.nan, dtype=np.float32)
    batch = FeatureBatch(values=values)
    for view in layout.views:
        status = np.full(n, NOT_REQUESTED, dtype=np.int8)
        age = np.full(n, np.nan)
        event = np.full(n, np.nan)
        requested = [i for i, k in enumerate(keys[view.join_key]) if k is not None]
        rows, stamps = per_view.get(view.name, ([], []))
        for i, row, stamp in zip(requested, rows, stamps, strict=True):
            if stamp is None:
                status[i] = MISSING
                continue
            age[i] = now - stamp
            event[i] = stamp
            if view.ttl_seconds is not None and age[i] > view.ttl_seconds:
                status[i] = STALE
                continue
            status[i] = PRESENT
            block = values[i, view.offset : view.offset + len(view.features)]
            block[:] = [np.nan if v is None else v for v in row]
        batch.status[view.join_key] = status
        batch.age_seconds[view.join_key] = age
        batch.event_timestamp[view.join_key] = event
    return batch


class FeastOnlineReader:
    """Reads through Feast's SDK: works on every online store Feast supports (SQLite, Redis)."""

    def __init__(self, store: FeatureStore, layout: StoreLayout) -> None:
        self.store = store
        self.layout = layout

    def read(self, keys: dict[str, list[str | None]]) -> FeatureBatch:
        """One SDK call per feature view, for the requests that carry that view's key."""
        per_view: dict[str, tuple[list[list[float | None]], list[float | None]]] = {}
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
                stamps_raw = response[f"{view.features[0]}__ts"]
                rows = [list(r) for r in zip(*columns, strict=True)]
                # Feast reports a zero timestamp for keys it has no row for.
                stamps = [None if s == 0 else float(s) for s in stamps_raw]
                per_view[view.name] = (rows, stamps)
        except STORE_ERRORS as exc:
            raise FeatureStoreUnavailable(
                "The online feature store cannot be read right now; retry shortly."
            ) from exc
        return assemble(self.layout, keys, per_view, time.time())

    def ping(self) -> None:
        """A real read of one key through the same path."""
        self.read({v.join_key: ["__readiness_probe__"] for v in self.layout.views})

    def close(self) -> None:
        """Feast owns its connections; nothing to release."""
