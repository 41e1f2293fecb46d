"""Materialization after the offline history was rewritten: incremental loading leaves rows of
the old history online; ``materialize --rebuild`` makes the online store equal the history.

Planted: the latest snapshot of a few cards is removed from the history after it was
materialized (as a regenerated history does), so each card's latest row is an older one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from feature_pipelines.cli import app
from feature_pipelines.skew import skew_check
from feature_repo import clock
from tests.conftest import copy_repo, feast_cli, materialize_end

pytestmark = pytest.mark.clock

SERVICE = "fraud_model_v1"
FEATURE = "card_txn_count_7d"


def materialize(repo: Path, *options: str) -> None:
    result = CliRunner().invoke(app, ["materialize", "--repo", str(repo), *options])
    assert result.exit_code == 0, result.output


def online(repo: Path, cards: list[str]) -> list[float | None]:
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    return store.get_online_features(
        features=[f"card_features:{FEATURE}"], entity_rows=[{"card_id": c} for c in cards]
    ).to_dict()[FEATURE]


def test_rebuild_makes_the_online_store_equal_a_rewritten_history(
    tmp_path: Path, feature_tables: dict[str, pd.DataFrame], data_end: datetime
) -> None:
    repo = copy_repo(tmp_path / "feature_repo", feature_tables)
    feast_cli(repo, "apply")
    end = materialize_end(data_end)
    materialize(repo, "--end", end)

    # Cards with two snapshots in the last week whose latest and previous counts differ.
    cards_table = feature_tables["card"].sort_values("event_timestamp")
    week = cards_table[cards_table["event_timestamp"] > pd.Timestamp(data_end) - timedelta(days=7)]
    last_two = week.groupby("card_id").tail(2)
    counts = last_two.groupby("card_id")[FEATURE].agg(["first", "last", "size"])
    planted = counts[(counts["size"] == 2) & (counts["first"] != counts["last"])].index[:5]
    assert len(planted) == 5, "the generated history has too few cards to plant on"
    planted_cards = list(planted)
    latest = last_two.groupby("card_id").tail(1)
    dropped = latest[latest["card_id"].isin(planted_cards)].index
    rewritten = {**feature_tables, "card": feature_tables["card"].drop(index=dropped)}
    copy_repo(repo, rewritten)  # the same definitions, the rewritten offline sources

    expected = [float(counts.loc[c, "first"]) for c in planted_cards]
    entities = {
        "card_id": planted_cards,
        "ip_address": list(feature_tables["ip"]["ip_address"].tail(5)),
        "merchant_id": list(feature_tables["merchant"]["merchant_id"].tail(5)),
    }
    at = clock.now()

    # Incremental loading only appends: the removed rows are still what the store answers.
    materialize(repo, "--end", end)
    assert online(repo, planted_cards) == [float(counts.loc[c, "last"]) for c in planted_cards]
    from feast import FeatureStore

    stale = skew_check(FeatureStore(repo_path=str(repo)), SERVICE, entities, at=at)
    assert not stale.ok and FEATURE in stale.summary()

    materialize(repo, "--end", end, "--rebuild")
    assert online(repo, planted_cards) == expected
    report = skew_check(FeatureStore(repo_path=str(repo)), SERVICE, entities, at=at)
    assert report.ok, report.summary()
    # Later incremental runs continue from the rebuild's end.
    materialize(repo, "--end", end)
    assert online(repo, planted_cards) == expected


def test_rebuild_refuses_a_view_that_does_not_exist(tmp_path: Path, feature_tables) -> None:
    repo = copy_repo(tmp_path / "feature_repo", {k: v.head(50) for k, v in feature_tables.items()})
    feast_cli(repo, "apply")
    result = CliRunner().invoke(
        app, ["materialize", "--repo", str(repo), "--rebuild", "--view", "no_such_view"]
    )
    assert result.exit_code != 0
    assert "no such feature view in the registry: no_such_view" in str(result.exception)
    result = CliRunner().invoke(
        app, ["materialize", "--repo", str(repo), "--rebuild", "--start", "2026-01-01"]
    )
    assert result.exit_code != 0 and "--rebuild chooses each view's window" in result.output
