"""Fixtures for the service: the app with its lifespan running, on SQLite and on Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from feature_pipelines.fraud.schema import api_body
from feature_repo.domain import load_domain
from scoring_service.api.app import create_app
from scoring_service.api.domain_api import DomainApi
from scoring_service.core.security import hash_key
from scoring_service.core.settings import Settings
from tests.conftest import FEATURE_REPO

# The payment domain's request and answer models, as the service builds them from its file.
FRAUD_API = DomainApi.build(load_domain(FEATURE_REPO))

API_KEY = "test-scoring-key"
ANALYST_KEY = "test-analyst-key"
ADMIN_KEY = "test-admin-key"
API_HEADERS = {"X-API-Key": API_KEY}
ANALYST_HEADERS = {"X-API-Key": ANALYST_KEY}
ADMIN_HEADERS = {"X-API-Key": ADMIN_KEY}


def settings_for(repo: Path, model_root: Path, yaml: str | None = None, **extra) -> Settings:
    """Settings of a test app: the test keys, and deadlines too generous to flake on a busy
    machine (tests of deadlines set their own)."""
    defaults: dict = {
        "api_key_hashes": (hash_key(API_KEY),),
        "analyst_key_hashes": (hash_key(ANALYST_KEY),),
        "admin_key_hashes": (hash_key(ADMIN_KEY),),
        "deadline_ms": 5_000,
        "batch_deadline_ms": 10_000,
    }
    return Settings(
        feature_repo=repo,
        feature_store_yaml=repo / yaml if yaml else None,
        model_root=model_root,
        **{**defaults, **extra},
    )


@pytest.fixture(scope="session", params=["sqlite", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def client(
    store_kind: str, request: pytest.FixtureRequest, model_root: Path
) -> Iterator[TestClient]:
    """A client of the app on the given store, lifespan running."""
    if store_kind == "sqlite":
        repo = request.getfixturevalue("sqlite_repo")
        settings = settings_for(repo, model_root, max_batch_size=50)
    else:
        repo = request.getfixturevalue("redis_repo")
        settings = settings_for(repo, model_root, "feature_store.redis.yaml", max_batch_size=50)
    with TestClient(create_app(settings), headers=API_HEADERS) as test_client:
        yield test_client


def as_request(row: pd.Series) -> dict:
    """A generated transaction as a business API body."""
    return api_body(row)


@pytest.fixture(scope="session")
def recent(transactions: pd.DataFrame, feature_tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Transactions of the last day whose three entities all have a materialized snapshot."""
    end = transactions.event_timestamp.max()
    frame = transactions[transactions.event_timestamp > end - pd.Timedelta(days=1)]
    for entity, key in (("ip", "ip_address"), ("card", "card_id"), ("merchant", "merchant_id")):
        table = feature_tables[entity]
        fresh = table[table.event_timestamp > end - pd.Timedelta(days=6)]
        frame = frame[frame[key].isin(set(fresh[key]))]
    assert len(frame) > 20, "the test data should have recent transactions of known entities"
    return frame


@pytest.fixture()
def valid_body(recent: pd.DataFrame) -> dict:
    return as_request(recent.iloc[-1])


@pytest.fixture(scope="session")
def deployment_packages(
    model_root: Path, sqlite_repo: Path, transactions_path: Path, tmp_path_factory
) -> Path:
    """Packages for deployments: v1, v1b (v1's trees sealed as another version), v2 (batch and
    streaming views) and rt, a request-time-only model for fallbacks, trained through the real
    pipeline."""
    import json
    import shutil

    from models.package import MANIFEST_FILE, seal_package
    from models.train import train

    root = tmp_path_factory.mktemp("deployment_packages")
    for version in ("v1", "v1b"):
        target = root / "fraud_model" / version
        shutil.copytree(model_root / "fraud_model" / "v1", target)
        manifest = json.loads((target / MANIFEST_FILE).read_text())
        manifest["version"] = version
        (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        seal_package(target)
    for service in ("fraud_model_rt", "fraud_model_v2"):
        train(
            repo_path=sqlite_repo,
            events_path=transactions_path,
            output_root=root,
            feature_service=service,
            num_boost_round=30,
        )
    return root
