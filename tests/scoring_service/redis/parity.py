"""Helpers that compare the fast reader with Feast's own get_online_features.

Shared by the single-server and the cluster tests: the layout of a store, rows planted through
Feast's write path (stale, nulls, odd integers, sub-second event times), random requests, and
the comparison itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from feature_repo import clock
from feature_repo.layout import EVIDENCE_TAG, ViewSpec
from scoring_service.stages.features import (
    MISSING,
    NOT_REQUESTED,
    PRESENT,
    STALE,
    FeatureBatch,
    StoreLayout,
)

T = TypeVar("T")


def on_loop(client: Any, call: Callable[[], Awaitable[T]]) -> T:
    """Run one call on a fresh event loop, closing the client's connections before it ends."""

    async def main() -> T:
        try:
            return await call()
        finally:
            client.close()

    return asyncio.run(main())


def store_layout(store: FeatureStore) -> StoreLayout:
    """Every feature view of the repository (several may share a join key)."""
    views = {}
    for view in sorted(store.list_feature_views(), key=lambda v: v.name):
        ttl = int(view.ttl.total_seconds()) if view.ttl else None
        views[view.name] = ViewSpec(
            view.join_keys[0],
            ttl,
            [f.name for f in view.features],
            evidence=view.tags.get(EVIDENCE_TAG, "required") != "optional",
        )
    return StoreLayout.from_views(views)


def plant_rows(store: FeatureStore, layout: StoreLayout) -> dict[str, list[str]]:
    """Rows written through Feast's own write path: stale, nulls, odd integers, sub-seconds."""
    now = clock.now()
    out: dict[str, list[str]] = {}
    for view in layout.views:
        fv = store.get_feature_view(view.name)
        types = {f.name: f.dtype.to_value_type().name for f in fv.features}
        ttl = timedelta(seconds=view.ttl_seconds or 86_400)
        rows = []
        for i in range(6):
            stale = i < 2
            stamp = now - (ttl + timedelta(days=1) if stale else timedelta(minutes=5 + i))
            stamp += timedelta(microseconds=123_457 * (i + 1))  # sub-second event times
            row: dict[str, object] = {
                view.join_key: f"parity_{view.name}_{i}",
                "event_timestamp": stamp,
                "created_timestamp": stamp,
            }
            for j, name in enumerate(view.features):
                if i == 3 and j % 2 == 0:
                    row[name] = None  # null value in an existing row
                elif types[name] in ("INT64", "INT32"):
                    row[name] = [-5, 300, 2**40, 0, 127, 128][(i + j) % 6]
                else:
                    row[name] = [0.1, -2.5, 1e30, 0.0, 3.0, 7.25][(i + j) % 6]
            rows.append(row)
        frame = pd.DataFrame(rows)
        for name in view.features:
            if types[name] in ("INT64", "INT32"):
                frame[name] = frame[name].astype("Int64")
        store.write_to_online_store(view.name, frame)
        out[view.join_key] = out.get(view.join_key, []) + [str(r[view.join_key]) for r in rows]
    return out


def known_entities(repo: Path) -> dict[str, list[str]]:
    """Entities materialized into the store (from the repository's offline tables)."""
    out = {}
    for path in (repo / "data").glob("*_features.parquet"):
        frame = pd.read_parquet(path)
        join_key = frame.columns[0]
        out[join_key] = frame[join_key].drop_duplicates().tolist()
    return out


def random_keys(
    rng: np.random.Generator,
    layout: StoreLayout,
    known: dict[str, list[str]],
    planted: dict[str, list[str]],
    n: int,
) -> dict[str, list[str | None]]:
    """n requests mixing known, planted, unknown, repeated and absent entities."""
    keys: dict[str, list[str | None]] = {}
    for join_key in {v.join_key for v in layout.views}:
        pool = known.get(join_key, [])
        column: list[str | None] = []
        for _ in range(n):
            kind = rng.integers(0, 10)
            if kind < 5 and pool:
                column.append(pool[rng.integers(0, len(pool))])
            elif kind < 7:
                column.append(planted[join_key][rng.integers(0, len(planted[join_key]))])
            elif kind < 8:
                column.append(f"never_seen_{join_key}_{rng.integers(0, 10**9)}")
            elif kind < 9 and column:
                column.append(column[rng.integers(0, len(column))])  # repeated in the request
            else:
                column.append(None)  # not part of this request
        if not any(c is not None for c in column):
            column[0] = pool[0] if pool else planted[join_key][0]
        keys[join_key] = column
    return keys


def expected_from_feast(
    store: FeatureStore, layout: StoreLayout, keys: dict[str, list[str | None]]
) -> tuple[dict, float, float]:
    """Feast's answer per view: (values [n, f], event seconds [n], found [n]) for requested
    rows, with the wall clock before and after the call."""
    before = clock.time()
    out = {}
    for view in layout.views:
        column = keys[view.join_key]
        wanted = [i for i, k in enumerate(column) if k is not None]
        if not wanted:  # Feast refuses an empty request
            out[view.name] = (wanted, np.empty((0, len(view.features))), np.empty(0))
            continue
        response = store.get_online_features(
            features=[f"{view.name}:{f}" for f in view.features],
            entity_rows=[{view.join_key: column[i]} for i in wanted],
        )
        answer = response.to_dict()
        names = list(response.proto.metadata.feature_names.val)
        results = {name: vector for name, vector in zip(names, response.proto.results, strict=True)}
        first = results[view.features[0]]
        stamps = np.array([t.seconds + t.nanos / 1e9 for t in first.event_timestamps])
        values = np.array(
            [
                [np.nan if answer[f][r] is None else answer[f][r] for f in view.features]
                for r in range(len(wanted))
            ],
            dtype=np.float64,
        ).reshape(len(wanted), len(view.features))
        out[view.name] = (wanted, values, stamps)
    return out, before, clock.time()


def assert_matches_feast(
    batch: FeatureBatch, layout: StoreLayout, keys: dict, feast: dict, before: float, after: float
) -> None:
    """Values per view as Feast returns them; per entity, the status and event time the rule of
    ``feature_repo.online`` gives, worked out here from Feast's answers: the most severe status
    among the entity's evidence views (missing > stale > present), the oldest row's event time
    unless missing. Requests on a TTL boundary during the call are left out."""
    n = len(next(iter(keys.values())))
    expected: dict[str, list[tuple[int, float] | None]] = {}  # view -> per request
    checked = 0
    for view in layout.views:
        wanted, values, stamps = feast[view.name]
        width, offset = len(view.features), view.offset
        block = batch.values[:, offset : offset + width]
        per_request: list[tuple[int, float] | None] = [(NOT_REQUESTED, np.nan)] * n
        absent = sorted(set(range(n)) - set(wanted))
        assert np.isnan(block[absent]).all()
        for r, i in enumerate(wanted):
            if stamps[r] == 0:  # Feast: no row for this key
                assert np.isnan(block[i]).all() and np.isnan(values[r]).all()
                per_request[i] = (MISSING, np.nan)
                continue
            stale_before = view.ttl_seconds is not None and before - stamps[r] > view.ttl_seconds
            stale_after = view.ttl_seconds is not None and after - stamps[r] > view.ttl_seconds
            if stale_before != stale_after:
                per_request[i] = None  # on the TTL boundary during the call
                continue
            if stale_after:
                assert np.isnan(block[i]).all()  # withheld, as in training
            else:
                np.testing.assert_array_equal(block[i], values[r].astype(np.float32))
            per_request[i] = (STALE if stale_after else PRESENT, stamps[r])
            checked += 1
        expected[view.name] = per_request
    severity = {NOT_REQUESTED: 0, PRESENT: 1, STALE: 2, MISSING: 3}
    for key in layout.join_keys:
        views = [v for v in layout.views if v.join_key == key]
        deciding = [v.name for v in views if v.evidence] or [v.name for v in views]
        for i in range(n):
            rows = [expected[name][i] for name in deciding]
            if any(row is None for row in rows):
                continue
            status = max((row[0] for row in rows), key=severity.__getitem__)  # type: ignore[index]
            stamps_i = [row[1] for row in rows if row[1] == row[1]]  # type: ignore[index]
            assert batch.status[key][i] == status
            if status in (MISSING, NOT_REQUESTED) or not stamps_i:
                assert np.isnan(batch.event_timestamp[key][i])
            else:
                assert batch.event_timestamp[key][i] == pytest.approx(min(stamps_i), abs=1e-6)
    assert checked > 0
