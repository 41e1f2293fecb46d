"""The fraud on-demand views: each runs the transform its tag names (the one serving runs), over
the request fields and stored features it declares; through Feast's point-in-time retrieval
they compute exact values from planted snapshots and request values."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore

from feature_repo.retrieval import retrieve
from feature_repo.transforms import resolve
from tests.conftest import FEATURE_REPO
from tests.feature_repo.conftest import T
from tests.feature_repo.on_demand_definitions import OnDemandDefinition, on_demand_views

# Feast's python-mode batch: one row with every input known, one with every input missing.
SAMPLE = {
    "amount": [150.0, None],
    "card_amount_mean_30d": [50.0, None],
    "card_amount_max_30d": [200.0, None],
    "ip_amount_mean_7d": [40.0, None],
    "card_rt_amount_sum_1h": [30.0, None],
    "card_rt_txn_count_1h": [3, None],
    "card_country": ["US", None],
    "ip_country": ["DE", "US"],
    "merchant_country": ["US", "US"],
}


@pytest.fixture(scope="module")
def views() -> dict[str, OnDemandDefinition]:
    return on_demand_views(FEATURE_REPO, SAMPLE)


def test_each_view_runs_the_transform_its_tag_names(views) -> None:
    assert sorted(views) == ["amount_context", "geo_context"]
    for name, view in views.items():
        transform = resolve(view.tags["transform"])
        assert transform.reference == f"feature_repo.fraud.transforms:{name}"
        assert view.mode == "python"
        assert view.sample_output == transform.function(SAMPLE), name


def test_each_view_declares_what_its_transform_reads_and_returns(views) -> None:
    for name, view in views.items():
        transform = resolve(view.tags["transform"])
        assert view.outputs == [(o, "Float64") for o in transform.outputs], name
        request = dict(view.request_fields)
        assert set(transform.request_fields) <= set(request), name
        stored = {f for features in view.source_views.values() for f in features}
        assert set(transform.stored_inputs) <= stored, name
    assert dict(views["amount_context"].request_fields)["amount"] == "Float64"
    assert views["geo_context"].source_views == {}  # request fields alone: the fallback's


def test_the_views_compute_from_snapshots_and_request_values(planted_repo: Path) -> None:
    entity_df = pd.DataFrame(
        {
            "transaction_id": ["tx_known", "tx_stale"],
            "event_timestamp": [T, T],
            "ip_address": ["198.51.100.10", "198.51.100.11"],
            "card_id": ["card_fresh", "card_stale"],
            "merchant_id": ["m_fresh", "m_stale"],
            "amount": [150.0, 150.0],
            "card_country": ["US", "US"],
            "ip_country": ["DE", "US"],
            "merchant_country": ["US", None],
        }
    )
    store = FeatureStore(repo_path=str(planted_repo))
    frame = retrieve(store, "fraud_model_v2", entity_df, sort_by=["transaction_id"])
    known, stale = frame.iloc[0], frame.iloc[1]
    # 150 over a card mean of 50 and maximum of 200, an IP mean of 40, 30 / 3 in the last hour.
    assert known["amount_to_card_mean_30d"] == 3.0
    assert known["amount_to_card_max_30d"] == 0.75
    assert known["amount_to_ip_mean_7d"] == 3.75
    assert known["amount_to_card_mean_1h"] == 15.0
    assert (known["ip_country_mismatch"], known["merchant_country_mismatch"]) == (1.0, 0.0)
    # Snapshots past their TTL are missing, and so is every ratio built on them.
    for name in (
        "amount_to_card_mean_30d",
        "amount_to_card_max_30d",
        "amount_to_ip_mean_7d",
        "amount_to_card_mean_1h",
    ):
        assert math.isnan(stale[name]), name
    assert stale["ip_country_mismatch"] == 0.0
    assert math.isnan(stale["merchant_country_mismatch"])
