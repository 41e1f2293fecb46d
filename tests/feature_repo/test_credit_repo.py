"""The credit Feast repository with the plain Feast CLI: apply, materialize-incremental, read.

A temporary copy of ``feature_repo/credit`` gets a sample of the tutorial's data through the loader
(applications with and without a credit history, the ZIP codes they name), is applied and
materialized by the ``feast`` command on the embedded default and on a real redis-server, and
answers ``get_online_features`` through the model's FeatureService with what the tables hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from feature_pipelines.credit.load import (
    HISTORY_FILE,
    LOANS_FILE,
    ZIPCODES_FILE,
    load,
    source_dir,
)
from feature_repo import clock
from feature_repo.layout import feature_layout, open_store
from feature_repo.retrieval import retrieve
from tests.conftest import RedisServer, feast_cli
from tests.feature_pipelines.credit.test_load import definitions_copy

pytestmark = pytest.mark.clock

SERVICE = "credit_model_v1"
SAMPLE = 200  # applications with a credit history, and as many without


@pytest.fixture(scope="module")
def sample_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small source folder in the tutorial's format: the loader reads it like the real one."""
    source = source_dir()
    loans = pd.read_parquet(source / LOANS_FILE)
    history = pd.read_csv(source / HISTORY_FILE)
    known = loans["dob_ssn"].isin(history["dob_ssn"])
    chosen = pd.concat([loans[known].head(SAMPLE), loans[~known].head(SAMPLE)])
    zipcodes = pd.read_parquet(source / ZIPCODES_FILE)
    folder = tmp_path_factory.mktemp("credit_source")
    chosen.to_parquet(folder / LOANS_FILE, index=False)
    zipcodes[zipcodes["zipcode"].isin(chosen["zipcode"])].to_parquet(
        folder / ZIPCODES_FILE, index=False
    )
    history.to_csv(folder / HISTORY_FILE, index=False)
    return folder


def materialized_repo(root: Path, source: Path, yaml: str, env: dict[str, str]) -> Path:
    repo = definitions_copy(root / "credit")
    load(source, repo)
    feast_cli(repo, "apply", yaml=yaml, env=env)
    end = (clock.now() + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    feast_cli(repo, "materialize-incremental", end, yaml=yaml, env=env)
    return repo


@pytest.fixture(scope="module")
def sqlite_repo(tmp_path_factory, sample_source) -> Path:
    return materialized_repo(
        tmp_path_factory.mktemp("credit_sqlite"), sample_source, "feature_store.yaml", {}
    )


@pytest.fixture(scope="module")
def redis_repo(tmp_path_factory, sample_source, redis_server: RedisServer) -> Iterator[Path]:
    env = {"REDIS_CONNECTION_STRING": redis_server.connection_string}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_CONNECTION_STRING", redis_server.connection_string)
        yield materialized_repo(
            tmp_path_factory.mktemp("credit_redis"), sample_source, "feature_store.redis.yaml", env
        )


def request_rows(applications: pd.DataFrame) -> list[dict[str, object]]:
    """Entity keys and the request fields the on-demand views read, per application."""
    fields = ["dob_ssn", "zipcode", "loan_amnt", "person_income"]
    fields += ["person_home_ownership", "loan_intent"]
    return applications[fields].to_dict("records")


def check_online(repo: Path, yaml: str) -> None:
    store = open_store(repo, repo / yaml)
    apps = pd.read_parquet(repo / "data" / "loan_applications.parquet")
    zips = pd.read_parquet(repo / "data" / "zipcode_features.parquet").set_index("zipcode")
    history = pd.read_parquet(repo / "data" / "credit_history.parquet").set_index("dob_ssn")
    with_history = apps[apps["dob_ssn"].isin(history.index)].head(3)
    without = apps[~apps["dob_ssn"].isin(history.index)].head(2)
    rows = request_rows(pd.concat([with_history, without]))
    rows.append({**rows[-1], "zipcode": "00000", "person_home_ownership": "CASTLE"})
    online = store.get_online_features(
        features=store.get_feature_service(SERVICE), entity_rows=rows
    ).to_dict()

    for i, row in enumerate(rows[:5]):
        assert online["population"][i] == zips.loc[row["zipcode"], "population"]
        assert online["loan_to_income"][i] == pytest.approx(
            row["loan_amnt"] / row["person_income"], rel=1e-6
        )
    for i, row in enumerate(rows[:3]):
        assert online["bankruptcies"][i] == history.loc[row["dob_ssn"], "bankruptcies"]
        assert online["debt_to_income"][i] is not None
    # No credit history, an unknown ZIP code: missing, never made up.
    assert online["bankruptcies"][3] is None and online["debt_to_income"][3] is None
    assert online["population"][5] is None and online["income_to_zip_mean_wage"][5] is None
    # A category outside the vocabulary (the service applies the declared treatment first).
    code = online["home_ownership_code"][5]
    assert code is None or math.isnan(code)


def test_apply_materialize_and_read_on_sqlite(sqlite_repo: Path) -> None:
    check_online(sqlite_repo, "feature_store.yaml")


@pytest.mark.redis
def test_apply_materialize_and_read_on_redis(redis_repo: Path) -> None:
    check_online(redis_repo, "feature_store.redis.yaml")


def test_training_and_serving_compute_the_same_features(sqlite_repo: Path) -> None:
    """Point-in-time retrieval (training) and the online read (serving) agree row by row."""
    store = open_store(sqlite_repo)
    apps = pd.read_parquet(sqlite_repo / "data" / "loan_applications.parquet").head(40)
    offline = retrieve(store, SERVICE, apps, sort_by=["event_timestamp", "loan_id"])
    online = pd.DataFrame(
        store.get_online_features(
            features=store.get_feature_service(SERVICE), entity_rows=request_rows(offline)
        ).to_dict()
    )
    layout = feature_layout(store, SERVICE)
    names = layout.stored_features + layout.on_demand_features
    served = online[names].apply(pd.to_numeric, errors="coerce").astype("float64")
    pd.testing.assert_frame_equal(served, offline[names], check_exact=False, rtol=1e-6)
    assert (
        offline["dob_ssn"]
        .isin(pd.read_parquet(sqlite_repo / "data" / "credit_history.parquet")["dob_ssn"])
        .any()
    )
