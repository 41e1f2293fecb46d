"""Training/serving skew check: the online feature vector against the offline one at time T.

For sampled entities and a time ``T`` (default: now), every stored feature of a FeatureService
is read twice:

- **online**, as serving reads it: the online store's row, withheld (None) when it is older
  than the view's TTL at ``T``, exactly as the scoring service withholds stale rows;
- **offline**, as training sees it: ``get_historical_features`` with ``event_timestamp = T``,
  the latest row at or before ``T`` within the TTL.

Any feature whose two values differ beyond ``abs_tol + rel_tol * |offline|`` (or where one side
has a value and the other none) is a mismatch. Causes it catches: a materialization or push that
never reached one store, a pipeline writing different values online and offline, rows stamped in
the future, a store restored from another day. On-demand views are computed rather than stored;
their training/serving parity is a property of the shared code
(``scoring_service.stages.on_demand``) and is tested there.

Run it when the writers are quiet (the stream consumer's offline flush interval is the most the
offline store may lag behind the online one).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from feast import FeatureStore

from feature_pipelines import schema
from feature_repo import clock
from feature_repo.layout import ViewSpec, feature_layout
from feature_repo.online import Row, StoreLayout, assemble

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mismatch:
    """One feature of one entity whose online and offline values differ."""

    view: str
    feature: str
    join_key: str
    entity: str
    online: float | None
    offline: float | None


@dataclass
class SkewReport:
    """What a skew check compared and what differed."""

    feature_service: str
    at: datetime
    entities: dict[str, int]
    compared: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing differed."""
        return not self.mismatches

    def by_feature(self) -> dict[str, int]:
        """Mismatch count per ``view:feature``, most frequent first."""
        counts = Counter(f"{m.view}:{m.feature}" for m in self.mismatches)
        return dict(counts.most_common())

    def summary(self, examples: int = 20) -> str:
        """Human-readable report: totals, mismatches per feature, a few examples."""
        sampled = ", ".join(f"{n} {key}" for key, n in self.entities.items())
        lines = [
            f"skew check of {self.feature_service} at {self.at.isoformat()}: sampled {sampled}; "
            f"compared {self.compared} values, {len(self.mismatches)} mismatches",
        ]
        for feature, count in self.by_feature().items():
            lines.append(f"  {feature}: {count} mismatches")
        for m in self.mismatches[:examples]:
            lines.append(
                f"    {m.join_key}={m.entity} {m.feature}: online {m.online!r} "
                f"offline {m.offline!r}"
            )
        if len(self.mismatches) > examples:
            lines.append(f"    ... and {len(self.mismatches) - examples} more")
        return "\n".join(lines)


def _number(value: object) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def values_match(
    online: float | None, offline: float | None, rel_tol: float, abs_tol: float
) -> bool:
    """Both absent, or both present and within ``abs_tol + rel_tol * |offline|``."""
    if online is None or offline is None:
        return online is None and offline is None
    return abs(online - offline) <= abs_tol + rel_tol * abs(offline)


def sample_entities(
    events: pd.DataFrame,
    join_keys: list[str],
    n: int,
    at: datetime,
    recent: timedelta = timedelta(hours=24),
    seed: int = 7,
) -> dict[str, list[str]]:
    """Up to ``n`` distinct entities per join key, drawn from the domain's raw events in
    ``[at - recent, at]`` (all events before ``at`` when that window is empty)."""
    stamps = pd.to_datetime(events[schema.EVENT_TIMESTAMP], utc=True)
    before = events[stamps <= pd.Timestamp(at)]
    window = before[pd.to_datetime(before[schema.EVENT_TIMESTAMP], utc=True) >= at - recent]
    pool = window if len(window) else before
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for key in join_keys:
        unique = pd.unique(pool[key].astype(str))
        take = min(n, len(unique))
        out[key] = sorted(rng.choice(unique, size=take, replace=False).tolist()) if take else []
    return out


def skew_check(
    store: FeatureStore,
    feature_service: str,
    entities: dict[str, list[str]],
    at: datetime | None = None,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
) -> SkewReport:
    """Compare online and offline point-in-time values of every stored feature of a service."""
    at = at or clock.now()
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    layout = feature_layout(store, feature_service)
    report = SkewReport(
        feature_service=feature_service,
        at=at,
        entities={k: len(v) for k, v in entities.items()},
    )
    for view, spec in layout.views.items():
        join_key, features = spec.join_key, spec.features
        keys = entities.get(join_key, [])
        if not keys:
            continue
        online = _online(store, view, spec, keys, at)
        offline = _offline(store, view, join_key, features, keys, at)
        for feature in features:
            for entity in keys:
                on = online[feature][entity]
                off = offline[feature].get(entity)
                report.compared += 1
                if not values_match(on, off, rel_tol, abs_tol):
                    report.mismatches.append(Mismatch(view, feature, join_key, entity, on, off))
    logger.info(
        "skew check: %d values compared, %d mismatches", report.compared, len(report.mismatches)
    )
    return report


def _online(
    store: FeatureStore, view: str, spec: ViewSpec, keys: list[str], at: datetime
) -> dict[str, dict[str, float | None]]:
    """Online values as the service would use them at ``at`` (the shared status rule)."""
    features = spec.features
    response = store.get_online_features(
        features=[f"{view}:{f}" for f in features],
        entity_rows=[{spec.join_key: k} for k in keys],
    ).to_dict(include_event_timestamps=True)
    # Feast reports 0 for a key without a row; past the TTL the row is withheld (NaN).
    rows: list[Row] = [
        (
            math.nan if not stamp else float(stamp),
            [math.nan if (v := _number(response[f][i])) is None else v for f in features],
        )
        for i, stamp in enumerate(response[f"{features[0]}__ts"])
    ]
    layout = StoreLayout.from_views({view: spec})
    values = assemble(layout, len(keys), {view: (list(range(len(keys))), rows)}, at.timestamp())
    return {
        f: {k: _number(values.values[i, j]) for i, k in enumerate(keys)}
        for j, f in enumerate(features)
    }


def _offline(
    store: FeatureStore,
    view: str,
    join_key: str,
    features: list[str],
    keys: list[str],
    at: datetime,
) -> dict[str, dict[str, float | None]]:
    entity_df = pd.DataFrame({join_key: keys, schema.EVENT_TIMESTAMP: [at] * len(keys)})
    entity_df[schema.EVENT_TIMESTAMP] = pd.to_datetime(entity_df[schema.EVENT_TIMESTAMP], utc=True)
    frame = store.get_historical_features(
        entity_df=entity_df, features=[f"{view}:{f}" for f in features]
    ).to_df()
    frame[join_key] = frame[join_key].astype(str)
    return {
        f: {k: _number(v) for k, v in zip(frame[join_key], frame[f], strict=True)} for f in features
    }
