"""Skew check: passes on a consistent store, names every planted mismatch, exits non-zero."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest
from feast.data_source import PushMode
from typer.testing import CliRunner

from feature_pipelines.cli import app
from feature_pipelines.fraud.windows import CATALOGUE
from feature_pipelines.skew import SkewReport, sample_entities, skew_check, values_match
from feature_repo import clock
from tests.conftest import StreamRig

pytestmark = [pytest.mark.clock, pytest.mark.redis]

SERVICE = "fraud_model_v2"
PLANTED_CARD_FEATURE = "card_txn_count_24h"


@pytest.fixture(scope="module")
def loaded(stream_rig: StreamRig, feature_tables, data_end: datetime) -> StreamRig:
    """Batch snapshots and replayed streaming rows, materialized: online equals offline."""
    stream_rig.load(
        {k: feature_tables[k] for k in CATALOGUE.tables}, end=data_end + timedelta(minutes=1)
    )
    return stream_rig


@pytest.fixture(scope="module")
def entities(transactions: pd.DataFrame, data_end: datetime) -> dict[str, list[str]]:
    """Entities of the last day, and everyone of the last hour (they have streaming rows)."""
    keys = ["ip_address", "card_id", "merchant_id"]
    sampled = sample_entities(transactions, keys, 40, data_end, recent=timedelta(days=1))
    last_hour = transactions[transactions["event_timestamp"] > data_end - timedelta(minutes=50)]
    return {k: sorted(set(sampled[k]) | set(last_hour[k].astype(str))) for k in keys}


def test_tolerance() -> None:
    assert values_match(None, None, 1e-6, 1e-9)
    assert not values_match(1.0, None, 1e-6, 1e-9)
    assert values_match(100.0, 100.00001, 1e-6, 1e-9)
    assert not values_match(100.0, 100.001, 1e-6, 1e-9)


def test_consistent_store_passes(loaded: StreamRig, entities) -> None:
    report = skew_check(loaded.store(), SERVICE, entities)
    assert report.ok, report.summary()
    n_features = 20 + 11  # batch + streaming features of fraud_model_v2
    assert report.compared >= n_features * 20
    # The streaming views were compared on real values, not on two empty sides.
    store = loaded.store()
    cards = entities["card_id"]
    online = store.get_online_features(
        features=["card_stream_features:card_rt_txn_count_1h"],
        entity_rows=[{"card_id": c} for c in cards],
    ).to_dict()
    assert any(v is not None for v in online["card_rt_txn_count_1h"])


@pytest.fixture(scope="module")
def planted(loaded: StreamRig, entities, feature_tables) -> dict[str, str]:
    """Two planted skews: an online value changed, and an offline row the online store lacks."""
    store = loaded.store()
    cards = feature_tables["card"]
    # A card with a batch snapshot (one active only in the last, unfinished hour has none yet).
    card = next(c for c in entities["card_id"] if (cards["card_id"] == c).any())
    row = cards[cards["card_id"] == card].sort_values("event_timestamp").tail(1).copy()
    # A newer online row with one feature changed (Redis keeps only a newer row).
    row["event_timestamp"] = row["event_timestamp"] + pd.Timedelta(seconds=1)
    row["created_timestamp"] = row["event_timestamp"]
    row[PLANTED_CARD_FEATURE] += 5
    store.write_to_online_store("card_features", row)

    ip = entities["ip_address"][-1]
    now = pd.Timestamp(clock.now() - timedelta(seconds=5)).floor("us")
    offline_only = pd.DataFrame(
        {
            "ip_address": pd.array([ip], dtype="string"),
            "event_timestamp": [now],
            "created_timestamp": [now],
            "ip_rt_txn_count_5m": [99],
            "ip_rt_txn_count_1h": [99],
            "ip_rt_amount_sum_5m": [1.5],
            "ip_rt_amount_sum_1h": [1.5],
            "ip_rt_distinct_cards_10m": [7],
        }
    )
    store.push("ip_stream_push", offline_only, to=PushMode.OFFLINE)
    return {"card": card, "ip": ip}


def test_planted_mismatches_are_reported_by_feature(loaded, entities, planted) -> None:
    report: SkewReport = skew_check(loaded.store(), SERVICE, entities)
    assert not report.ok
    found = {(m.view, m.feature, m.entity) for m in report.mismatches}
    assert ("card_features", PLANTED_CARD_FEATURE, planted["card"]) in found
    assert ("ip_stream_features", "ip_rt_txn_count_5m", planted["ip"]) in found
    # Nothing else differs: only the planted entities, and on the card only the changed value.
    assert {m.entity for m in report.mismatches} == {planted["card"], planted["ip"]}
    card_features = {m.feature for m in report.mismatches if m.entity == planted["card"]}
    assert card_features == {PLANTED_CARD_FEATURE}
    offline_ip = {m.feature: m.offline for m in report.mismatches if m.entity == planted["ip"]}
    assert offline_ip["ip_rt_txn_count_5m"] == 99
    assert f"card_features:{PLANTED_CARD_FEATURE}: 1 mismatches" in report.summary()


def test_cli_exit_code(loaded: StreamRig, planted, entities) -> None:
    base = ["skew-check", "--repo", str(loaded.repo), "--yaml", str(loaded.yaml)]
    skewed = CliRunner().invoke(app, [*base, "--entity", f"card_id={planted['card']}"])
    assert skewed.exit_code == 1, skewed.output
    assert PLANTED_CARD_FEATURE in skewed.output
    clean = next(c for c in entities["card_id"] if c != planted["card"])
    fine = CliRunner().invoke(app, [*base, "--entity", f"card_id={clean}"])
    assert fine.exit_code == 0, fine.output
