"""Feast on Spark: training sets from the Spark offline store, materialization by the Spark
compute engine, both equal to what the DuckDB default gives over the same parquet tables.

One repository (``spark_repo``) holds both configurations: ``feature_store.yaml`` (DuckDB
offline store, SparkSource-free registry) and ``feature_store.spark.yaml`` (Spark offline store
and compute engine, its own registry and SQLite online store). The sources become SparkSource
under the Spark yaml through ``feature_repo.sources`` (unit-tested in ``test_sources.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from feature_repo.layout import feature_layout
from feature_repo.retrieval import retrieve
from tests.conftest import RedisServer, free_port
from tests.feature_pipelines.spark_helpers import END, SPARK_MARKS
from tests.feature_repo.fraud.conftest import SPARK_YAML

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = SPARK_MARKS

TOLERANCE = 1e-9
FEATURE_SERVICE = "fraud_model_v2"  # batch, streaming and on-demand views
# Every 10th transaction: 10,000 rows across the whole history (the Spark point-in-time join
# of all 100,000 costs minutes on two cores and proves nothing more).
ENTITY_STRIDE = 10
ID = "transaction_id"
SORT = ["event_timestamp", ID]


def stores(repo: Path) -> tuple[FeatureStore, FeatureStore]:
    """(DuckDB store, Spark store) of the repository."""
    return FeatureStore(repo_path=str(repo)), FeatureStore(
        repo_path=str(repo), fs_yaml_file=repo / SPARK_YAML
    )


def entity_frame(transactions: Path, store: FeatureStore) -> pd.DataFrame:
    """Labelled transactions as the entity dataframe training builds (keys, request fields)."""
    layout = feature_layout(store, FEATURE_SERVICE)
    columns = list(
        dict.fromkeys(
            [ID, "event_timestamp", *layout.join_keys, "amount", *layout.request_fields, "is_fraud"]
        )
    )
    frame = pd.read_parquet(transactions, columns=columns).iloc[::ENTITY_STRIDE]
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame.reset_index(drop=True)


def test_spark_training_set_equals_duckdb(
    spark: SparkSession, spark_repo: Path, transactions_100k: Path
) -> None:
    duckdb_store, spark_store = stores(spark_repo)
    entity_df = entity_frame(transactions_100k, duckdb_store)
    expected = retrieve(duckdb_store, FEATURE_SERVICE, entity_df.copy(), sort_by=SORT)
    actual = retrieve(spark_store, FEATURE_SERVICE, entity_df.copy(), sort_by=SORT)

    assert sorted(actual.columns) == sorted(expected.columns)
    actual = actual[expected.columns]
    assert len(actual) == len(expected) == len(entity_df)
    np.testing.assert_array_equal(actual[ID].to_numpy(), expected[ID].to_numpy())
    layout = feature_layout(duckdb_store, FEATURE_SERVICE)
    features = layout.stored_features + layout.on_demand_features
    for name in expected.columns:
        if name in features:
            want, got = expected[name].to_numpy(), actual[name].to_numpy()
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE, err_msg=name)
        else:
            pd.testing.assert_series_equal(actual[name], expected[name], check_dtype=False)
    # Not vacuous: most rows have their batch features, some their streaming ones.
    assert expected["card_txn_count_24h"].notna().mean() > 0.9
    assert expected["ip_rt_txn_count_1h"].notna().any()


def online_vectors(store: FeatureStore, transactions: Path) -> pd.DataFrame:
    """Online values of every stored feature of the service for the last 2,000 transactions."""
    layout = feature_layout(store, FEATURE_SERVICE)
    rows = (
        pd.read_parquet(transactions, columns=layout.join_keys)
        .tail(2_000)
        .drop_duplicates()
        .to_dict("records")
    )
    refs = [f"{view}:{f}" for view, spec in layout.views.items() for f in spec.features]
    frame = store.get_online_features(features=refs, entity_rows=rows).to_df()
    return frame[layout.join_keys + layout.stored_features]


def materialize_window() -> tuple[datetime, datetime]:
    end = datetime.fromisoformat(END).replace(tzinfo=UTC) + timedelta(hours=1)
    return end - timedelta(days=40), end


@pytest.fixture(scope="module")
def duckdb_online(spark_repo: Path, transactions_100k: Path) -> pd.DataFrame:
    """What the default (in-process) engine materializes into the SQLite online store."""
    store, _ = stores(spark_repo)
    start, end = materialize_window()
    store.materialize(start_date=start, end_date=end)
    return online_vectors(store, transactions_100k)


def assert_same_online(expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    assert expected.iloc[:, 3:].notna().to_numpy().mean() > 0.5  # rows really materialized
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=0, atol=TOLERANCE)


def test_spark_engine_materializes_sqlite(
    spark: SparkSession, spark_repo: Path, transactions_100k: Path, duckdb_online: pd.DataFrame
) -> None:
    _, store = stores(spark_repo)
    start, end = materialize_window()
    store.materialize(start_date=start, end_date=end)
    assert_same_online(duckdb_online, online_vectors(store, transactions_100k))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: the session's shared one holds the same project."""
    server = RedisServer(port=free_port(), workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.redis
def test_spark_engine_materializes_redis(
    spark: SparkSession,
    spark_repo: Path,
    transactions_100k: Path,
    duckdb_online: pd.DataFrame,
    own_redis: RedisServer,
) -> None:
    # The Spark registry (already applied) with a Redis online store: Redis needs no infra.
    text = (spark_repo / SPARK_YAML).read_text()
    online = "online_store:\n  type: sqlite\n  path: data/online_store.spark.db\n"
    assert online in text
    redis_online = (
        f'online_store:\n  type: redis\n  connection_string: "{own_redis.connection_string}"\n'
    )
    yaml = spark_repo / "feature_store.spark_redis.yaml"
    yaml.write_text(text.replace(online, redis_online))
    store = FeatureStore(repo_path=str(spark_repo), fs_yaml_file=yaml)
    start, end = materialize_window()
    store.materialize(start_date=start, end_date=end)
    assert_same_online(duckdb_online, online_vectors(store, transactions_100k))
