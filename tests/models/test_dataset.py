"""Training-set retrieval: the domain's events as Feast's entity dataframe, and the
point-in-time correctness of the training set, on planted feature rows.

A feature value stamped after a transaction must never reach that transaction's training row;
the latest value at or before it must; a value older than the view's TTL must not.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_pipelines.fraud.schema import CARD_FEATURES, IP_FEATURES, MERCHANT_FEATURES
from feature_repo.domain import EntitySpec, load_domain
from models.dataset import (
    EVENT_TIMESTAMP,
    entity_dataframe,
    load_events,
    open_store,
    retrieve_training_set,
)
from tests.conftest import ROOT, copy_repo, feast_cli

FRAUD = load_domain(ROOT / "feature_repo" / "fraud")

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


@pytest.mark.clock
def test_no_value_from_after_the_transaction(planted: pd.DataFrame) -> None:
    features = IP_FEATURES + CARD_FEATURES + MERCHANT_FEATURES
    assert not (planted[features] == LEAK).any().any()


@pytest.mark.clock
def test_latest_value_at_or_before_is_joined(planted: pd.DataFrame) -> None:
    assert planted.loc["at_T", "ip_txn_count_1h"] == 2
    assert planted.loc["before", "ip_txn_count_1h"] == 1
    assert planted.loc["at_T", "card_txn_count_1h"] == 3
    assert planted.loc["at_T", "merchant_txn_count_24h"] == 4


@pytest.mark.clock
def test_value_older_than_ttl_is_withheld(planted: pd.DataFrame) -> None:
    assert np.isnan(planted.loc["old_ip", "ip_txn_count_1h"])
    assert planted.loc["old_ip", "card_txn_count_1h"] == 3


@pytest.mark.clock
def test_labels_and_request_values_kept(planted: pd.DataFrame) -> None:
    assert planted.loc["before", "is_fraud"] == 1
    assert planted.loc["old_ip", "amount"] == 30.0


# --- the entity dataframe -------------------------------------------------------------------------


def events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": ["t1", "t2", "t3"],
            "event_timestamp": pd.to_datetime(
                [T - timedelta(hours=1), T, T + timedelta(hours=1)], utc=True
            ),
            "ip_address": ["198.51.100.1"] * 3,
            "card_id": ["card_1", "card_2", "card_3"],
            "merchant_id": ["m_1"] * 3,
            "amount": [10.0, 20.0, 30.0],
            "card_country": ["US", "FR", "US"],
            "fraud_pattern": ["none", "none", "card_testing"],  # evaluation only: left out
            "is_fraud": [0, 1, 0],
        }
    )


def test_the_entity_dataframe_holds_ids_time_keys_request_values_and_label() -> None:
    frame = entity_dataframe(events(), FRAUD, request_fields=["card_country"])
    assert list(frame.columns) == [
        "transaction_id",
        EVENT_TIMESTAMP,
        "ip_address",
        "card_id",
        "merchant_id",
        "amount",
        "card_country",
        "is_fraud",
    ]
    assert frame["is_fraud"].tolist() == [0, 1, 0]


def test_the_window_is_start_inclusive_end_exclusive() -> None:
    frame = entity_dataframe(events(), FRAUD, start=T, end=T + timedelta(hours=1))
    assert frame["transaction_id"].tolist() == ["t2"]
    assert frame.index.tolist() == [0]


def test_request_fields_become_their_join_keys() -> None:
    renamed = FRAUD.model_copy(
        update={"entities": {**FRAUD.entities, "card": EntitySpec(join_key="card_id")}}
    )
    renamed.entities.pop("card_id")
    source = events().rename(columns={"card_id": "card"})
    frame = entity_dataframe(source, renamed)
    assert "card" not in frame.columns
    assert frame["card_id"].tolist() == ["card_1", "card_2", "card_3"]


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match=r"the fraud training data lacks column\(s\) \['amount'\]"):
        entity_dataframe(events().drop(columns="amount"), FRAUD)


def test_events_are_read_with_utc_times(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    naive = events().assign(event_timestamp=lambda f: f["event_timestamp"].dt.tz_localize(None))
    naive.to_parquet(path)
    read = load_events(path, FRAUD)
    assert str(read["event_timestamp"].dt.tz) == "UTC"
    assert read["event_timestamp"].tolist() == events()["event_timestamp"].tolist()
