"""Drift and freshness in the service: planted drift, planted staleness, periodic summaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from feature_pipelines.fraud.schema import api_body
from feature_repo import clock
from feature_repo.layout import ViewSpec
from feature_repo.online import FeatureBatch, StoreLayout, assemble
from models.package import Manifest, read_manifest
from scoring_service.api.app import create_app
from scoring_service.monitoring.drift import DriftMonitor, ViewWatch
from tests.drift_traffic import traffic
from tests.fixtures.service import API_HEADERS, settings_for

pytestmark = pytest.mark.clock

PSI_ALERT = 0.2  # the threshold of infra/prometheus/alerts.yml
SHIFTED = "amount"
FACTOR = 3.0  # planted drift: every amount tripled
BATCH = 64
DAY = 86_400.0


@pytest.fixture(scope="module")
def manifest(model_root: Path) -> Manifest:
    return read_manifest(model_root / "fraud_model" / "v1")


def store_layout(manifest: Manifest) -> StoreLayout:
    return StoreLayout.from_views(
        {
            view: ViewSpec(info.join_key, info.ttl_seconds, info.features, info.evidence)
            for view, info in manifest.feature_views.items()
        }
    )


def watches(manifest: Manifest) -> list[ViewWatch]:
    return [
        ViewWatch(view, info.join_key, info.ttl_seconds, info.evidence)
        for view, info in manifest.feature_views.items()
    ]


def batch_with_ages(manifest: Manifest, n: int, ages: dict[str, float]) -> FeatureBatch:
    """What a reader returns for n requests whose view rows are this old (NaN: no row)."""
    layout = store_layout(manifest)
    now = clock.time()
    reads = {
        view.name: (
            list(range(n)),
            [(now - ages[view.name], [0.0] * len(view.features))] * n,
        )
        for view in layout.views
    }
    return assemble(layout, n, reads, now)


def feed(monitor: DriftMonitor, manifest: Manifest, matrix: np.ndarray, scores: np.ndarray):
    """Serve the rows in micro-batches, as the scorer does."""
    fresh = {view: 600.0 for view in manifest.feature_views}
    for start in range(0, len(scores), BATCH):
        rows = slice(start, start + BATCH)
        n = len(scores[rows])
        monitor.observe(matrix[rows], scores[rows], batch_with_ages(manifest, n, fresh))


def quiet(manifest: Manifest, **options) -> DriftMonitor:
    """A monitor that summarises only when asked."""
    return DriftMonitor.for_manifest(
        manifest,
        watches(manifest),
        every_rows=10**9,
        every_s=1e9,
        background=False,
        **options,
    )


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_planted_drift_moves_that_feature_over_the_threshold_and_no_other(
    manifest: Manifest,
) -> None:
    matrix, scores = traffic(manifest, 4096, seed=3)
    calm_monitor = quiet(manifest)
    feed(calm_monitor, manifest, matrix, scores)
    calm = calm_monitor.refresh()
    assert calm.rows == 4096
    assert max(calm.feature_psi.values()) < 0.05
    assert calm.score_psi < 0.05

    j = manifest.features.index(SHIFTED)
    shifted = matrix.copy()
    shifted[:, j] *= FACTOR
    drift_monitor = quiet(manifest)
    feed(drift_monitor, manifest, shifted, scores)
    drifted = drift_monitor.refresh()

    assert drifted.feature_psi[SHIFTED] > PSI_ALERT
    over = {name for name, value in drifted.feature_psi.items() if value > PSI_ALERT}
    assert over == {SHIFTED}
    for name, value in drifted.feature_psi.items():
        if name != SHIFTED:
            assert value == calm.feature_psi[name]
    assert drifted.missing_rate == calm.missing_rate  # a shift, not a gap
    exported = gauge("scoring_feature_psi", model_version="fraud_model/v1", feature=SHIFTED)
    assert exported == pytest.approx(drifted.feature_psi[SHIFTED])


def test_a_feature_going_missing_shows_in_its_missing_rate(manifest: Manifest) -> None:
    matrix, scores = traffic(manifest, 2048, seed=4)
    gone = "merchant_fraud_rate_30d"
    matrix[:, manifest.features.index(gone)] = np.nan
    monitor = quiet(manifest)
    feed(monitor, manifest, matrix, scores)
    snap = monitor.refresh()
    assert snap.missing_rate[gone] == 1.0
    assert np.isnan(snap.feature_psi[gone])  # nothing left to compare
    assert gauge(
        "scoring_feature_missing_rate", model_version="fraud_model/v1", feature=gone
    ) == pytest.approx(1.0)


def test_planted_staleness_shows_in_the_freshness_gauges(manifest: Manifest) -> None:
    matrix, scores = traffic(manifest, 300, seed=5)
    ages = {
        "ip_features": 300.0,  # refreshed five minutes ago
        "card_features": 3 * DAY,  # its pipeline stopped three days ago (TTL 30 days)
        "merchant_features": float("nan"),  # never materialized
    }
    monitor = quiet(manifest)
    for start in range(0, 300, BATCH):
        rows = slice(start, start + BATCH)
        n = len(scores[rows])
        monitor.observe(matrix[rows], scores[rows], batch_with_ages(manifest, n, ages))
    snap = monitor.refresh()

    assert snap.unavailable_ratio == {
        "ip_features": 0.0,
        "card_features": 0.0,
        "merchant_features": 1.0,
    }
    assert 300.0 <= snap.age_seconds["ip_features"]["min"] < 3_600.0
    assert snap.age_seconds["card_features"]["min"] >= 3 * DAY
    assert np.isnan(snap.age_seconds["merchant_features"]["min"])
    assert gauge("scoring_feature_unavailable_ratio", view="merchant_features") == 1.0
    assert gauge("scoring_feature_age_seconds", view="card_features", stat="min") >= 3 * DAY
    assert gauge("scoring_feature_age_seconds", view="ip_features", stat="min") < 3_600.0


def test_summaries_come_every_n_rows_or_seconds_not_per_request(manifest: Manifest) -> None:
    now = [0.0]
    own = manifest.model_copy(update={"version": "periodic"})
    monitor = DriftMonitor.for_manifest(
        own, watches(own), every_rows=1000, every_s=10.0, background=False, clock=lambda: now[0]
    )
    matrix, scores = traffic(manifest, 1200, seed=6)
    fresh = {view: 600.0 for view in manifest.feature_views}

    def serve(rows: slice) -> None:
        n = len(scores[rows])
        monitor.observe(matrix[rows], scores[rows], batch_with_ages(manifest, n, fresh))

    def window_rows() -> float | None:
        return gauge("scoring_drift_window_rows", model_version="fraud_model/periodic")

    for start in range(0, 960, BATCH):  # 15 batches, 960 rows: no summary yet
        serve(slice(start, start + BATCH))
    assert window_rows() == 0.0
    serve(slice(960, 1024))  # row 1000 passed
    assert window_rows() == 1024.0
    serve(slice(1024, 1088))
    assert window_rows() == 1024.0  # 64 rows and no time later: nothing
    now[0] += 11.0
    serve(slice(1088, 1152))  # ten seconds passed
    assert window_rows() == 1152.0


def test_a_batch_it_cannot_read_never_fails_scoring(manifest: Manifest) -> None:
    monitor = quiet(manifest)
    wrong = np.zeros((4, 3), dtype=np.float32)
    monitor.observe(wrong, np.zeros(4), batch_with_ages(manifest, 4, dict.fromkeys(
        manifest.feature_views, 60.0)))  # fmt: skip
    assert monitor.refresh().rows == 0


def test_planted_drift_through_the_service(
    sqlite_repo: Path, model_root: Path, transactions: pd.DataFrame
) -> None:
    end = transactions.event_timestamp.max()
    day = transactions[transactions.event_timestamp > end - pd.Timedelta(days=1)]
    bodies = [api_body(row) for row in day.itertuples()]
    settings = settings_for(sqlite_repo, model_root, max_batch_size=len(bodies))
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        scorer = client.app.state.primary.scorer  # type: ignore[attr-defined]

        def serve(amount_factor: float):
            scorer.drift = DriftMonitor.for_model(
                scorer.model, every_rows=10**9, every_s=1e9, background=False
            )
            batch = [{**b, "amount": b["amount"] * amount_factor} for b in bodies]
            response = client.post("/v1/transactions/score-batch", json={"transactions": batch})
            assert response.status_code == 200, response.text
            return scorer.drift.refresh()

        calm = serve(1.0)
        drifted = serve(FACTOR)
        exposition = client.get("/metrics").text

    assert calm.rows == drifted.rows == len(bodies)
    assert calm.feature_psi[SHIFTED] < PSI_ALERT < drifted.feature_psi[SHIFTED]
    for name, value in drifted.feature_psi.items():
        if name != SHIFTED:  # the same entities read from the same store
            assert value == pytest.approx(calm.feature_psi[name], abs=0.01)
    line = f'scoring_feature_psi{{feature="{SHIFTED}",model_version="fraud_model/v1"}}'
    assert line in exposition
    assert "scoring_feature_age_seconds{" in exposition
