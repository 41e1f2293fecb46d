"""Point-in-time correctness of the training set, on planted feature rows.

A feature value stamped after a transaction must never reach that transaction's training row;
the latest value at or before it must; a value older than the view's TTL must not.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from feature_pipelines.fraud.schema import CARD_FEATURES, IP_FEATURES, MERCHANT_FEATURES
from feature_repo.domain import load_domain
from models.dataset import entity_dataframe, open_store, retrieve_training_set
from tests.conftest import copy_repo, feast_cli

pytestmark = pytest.mark.clock

T = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
LEAK = 999_999


def table(key: str, features: list[str], rows: list[tuple[str, datetime, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            key: [r[0] for r in rows],
            "event_timestamp": pd.to_datetime([r[1] for r in rows], utc=True),
            "created_timestamp": pd.to_datetime([r[1] for r in rows], utc=True),
        }
    )
    for name in features:
        values = [r[2] for r in rows]
        if "count" in name:
            frame[name] = np.asarray(values, dtype=np.int64)
        else:
            frame[name] = np.asarray(values, dtype=np.float64)
    return frame


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> pd.DataFrame:
    ip, old_ip = "198.51.100.7", "198.51.100.8"
    tables = {
        "ip": table(
            "ip_address",
            IP_FEATURES,
            [
                (ip, T - timedelta(hours=3), 1),
                (ip, T, 2),  # exactly at the transaction: known (snapshot of events before T)
                (ip, T + timedelta(seconds=1), LEAK),  # after: must never be seen at T
                (ip, T + timedelta(days=1), LEAK),
                (old_ip, T - timedelta(days=20), 5),  # older than the 14-day TTL
            ],
        ),
        "card": table(
            "card_id",
            CARD_FEATURES,
            [("card_1", T - timedelta(hours=1), 3), ("card_1", T + timedelta(minutes=5), LEAK)],
        ),
        "merchant": table(
            "merchant_id",
            MERCHANT_FEATURES,
            [("m_1", T - timedelta(days=1), 4), ("m_1", T + timedelta(hours=2), LEAK)],
        ),
    }
    repo = copy_repo(tmp_path_factory.mktemp("pit") / "feature_repo", tables)
    feast_cli(repo, "apply")
    transactions = pd.DataFrame(
        {
            "transaction_id": ["at_T", "before", "old_ip"],
            "event_timestamp": pd.to_datetime([T, T - timedelta(hours=2), T], utc=True),
            "ip_address": [ip, ip, old_ip],
            "card_id": ["card_1", "card_1", "card_1"],
            "merchant_id": ["m_1", "m_1", "m_1"],
            "amount": [10.0, 20.0, 30.0],
            "is_fraud": [0, 1, 0],
        }
    )
    store = open_store(repo)
    spec = load_domain(repo)
    frame = retrieve_training_set(
        store, "fraud_model_v1", entity_dataframe(transactions, spec), spec
    )
    return frame.set_index("transaction_id")


def test_no_value_from_after_the_transaction(planted: pd.DataFrame) -> None:
    features = IP_FEATURES + CARD_FEATURES + MERCHANT_FEATURES
    assert not (planted[features] == LEAK).any().any()


def test_latest_value_at_or_before_is_joined(planted: pd.DataFrame) -> None:
    assert planted.loc["at_T", "ip_txn_count_1h"] == 2
    assert planted.loc["before", "ip_txn_count_1h"] == 1
    assert planted.loc["at_T", "card_txn_count_1h"] == 3
    assert planted.loc["at_T", "merchant_txn_count_24h"] == 4


def test_value_older_than_ttl_is_withheld(planted: pd.DataFrame) -> None:
    assert np.isnan(planted.loc["old_ip", "ip_txn_count_1h"])
    assert planted.loc["old_ip", "card_txn_count_1h"] == 3


def test_labels_and_request_values_kept(planted: pd.DataFrame) -> None:
    assert planted.loc["before", "is_fraud"] == 1
    assert planted.loc["old_ip", "amount"] == 30.0
