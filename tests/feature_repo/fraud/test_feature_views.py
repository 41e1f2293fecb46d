"""The fraud batch feature views: a snapshot serves a transaction until the view's TTL has passed,
and a point-in-time join takes the latest snapshot at or before the transaction, never a later one.

Read back through Feast's offline store from the repository applied over planted snapshots
(``planted_repo``); a planted entity sits one hour inside or outside each view's TTL.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore

from tests.feature_repo.conftest import HOUR, T


def historical(repo: Path, rows: list[dict[str, object]], features: list[str]) -> pd.DataFrame:
    store = FeatureStore(repo_path=str(repo))
    entity_df = pd.DataFrame(rows)
    entity_df["row"] = range(len(entity_df))
    frame = store.get_historical_features(entity_df=entity_df, features=features).to_df()
    return frame.sort_values("row").reset_index(drop=True)


@pytest.mark.parametrize(
    ("view", "key", "feature", "fresh", "stale", "value"),
    [
        ("ip_features", "ip_address", "ip_txn_count_7d", "198.51.100.10", "198.51.100.11", 13),
        ("card_features", "card_id", "card_txn_count_7d", "card_fresh", "card_stale", 29),
        ("merchant_features", "merchant_id", "merchant_txn_count_7d", "m_fresh", "m_stale", 6),
    ],
)
def test_a_snapshot_serves_until_the_views_ttl(
    planted_repo: Path, view: str, key: str, feature: str, fresh: str, stale: str, value: int
) -> None:
    """ip_features 14 days, card_features 30, merchant_features 7: a quiet entity keeps its last
    snapshot that long, then counts as unknown."""
    rows = [{key: fresh, "event_timestamp": T}, {key: stale, "event_timestamp": T}]
    frame = historical(planted_repo, rows, [f"{view}:{feature}"])
    assert frame[feature].iloc[0] == value
    assert pd.isna(frame[feature].iloc[1])


def test_the_join_takes_the_latest_snapshot_at_or_before_the_transaction(
    planted_repo: Path,
) -> None:
    rows = [
        {"card_id": "card_pit", "event_timestamp": at}
        for at in (T - 3 * HOUR, T - HOUR, T, T + 30 * pd.Timedelta(minutes=1))
    ]
    frame = historical(planted_repo, rows, ["card_features:card_txn_count_7d"])
    # Before the first snapshot: nothing; the snapshot at T (events before T) serves T itself.
    values = frame["card_txn_count_7d"].tolist()
    assert math.isnan(values[0])
    assert values[1:] == [5, 7, 7]


def test_every_stored_feature_of_a_view_comes_with_its_snapshot(planted_repo: Path) -> None:
    frame = historical(
        planted_repo,
        [{"card_id": "card_fresh", "event_timestamp": T}],
        [
            "card_features:card_amount_mean_30d",
            "card_features:card_amount_max_30d",
            "card_features:card_txn_count_1h",
        ],
    )
    row = frame.iloc[0]
    assert (row["card_amount_mean_30d"], row["card_amount_max_30d"]) == (50.0, 200.0)
    assert row["card_txn_count_1h"] == 0
