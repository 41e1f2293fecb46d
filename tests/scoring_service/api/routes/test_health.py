"""Health: liveness says the process answers; readiness says every served domain has its model
loaded and its online store answering a real read, and names what is not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feature_repo.domain import load_domain
from scoring_service.api.app import create_app
from scoring_service.served import ServedDomain
from tests.conftest import ROOT, free_port
from tests.fixtures.service import settings_for

NOT_STARTED = {
    "status": "not_ready",
    "checks": {"model": "not loaded", "feature_store": "unknown"},
    "model_version": None,
    "device": None,
    "graph": None,
}


@pytest.fixture(scope="module")
def started(sqlite_repo: Path, model_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(sqlite_repo, model_root, device="cpu"))) as client:
        yield client


def test_alive_whatever_the_state(sqlite_repo: Path, model_root: Path) -> None:
    unstarted = TestClient(create_app(settings_for(sqlite_repo, model_root)))  # no lifespan
    expected = {**NOT_STARTED, "status": "alive", "checks": {}}
    assert unstarted.get("/health/live").json() == expected
    ready = unstarted.get("/health/ready")
    assert ready.status_code == 503 and ready.json() == NOT_STARTED


def test_ready_when_the_model_is_loaded_and_the_store_answers(started: TestClient) -> None:
    assert started.get("/health/live").json()["status"] == "alive"
    ready = started.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"model": "loaded", "feature_store": "reachable"},
        "model_version": "fraud_model/v1",
        "device": "cpu",
        "graph": "cpu",
    }


def test_every_served_domain_is_checked(started: TestClient) -> None:
    """A second domain not yet opened makes the service not ready, named by its domain; once
    it has a live scorer whose store answers, ready again."""
    app = started.app
    folder = ROOT / "feature_repo" / "credit"
    credit = ServedDomain(
        spec=load_domain(folder),
        folder=folder,
        yaml=None,
        model_name="credit_model",
        model_version="v1",
        primary=False,
    )
    app.state.domains["credit"] = credit  # type: ignore[attr-defined]
    try:
        waiting = started.get("/health/ready")
        assert waiting.status_code == 503
        assert waiting.json()["status"] == "not_ready"
        assert waiting.json()["checks"] == {
            "model": "loaded",
            "feature_store": "reachable",
            "model:credit": "not loaded",
            "feature_store:credit": "unknown",
        }
        credit.scorer = app.state.primary.scorer  # type: ignore[attr-defined]
        opened = started.get("/health/ready")
        assert opened.status_code == 200
        assert opened.json()["checks"]["model:credit"] == "loaded"
        assert opened.json()["checks"]["feature_store:credit"] == "reachable"
    finally:
        del app.state.domains["credit"]  # type: ignore[attr-defined]


@pytest.mark.redis
def test_not_ready_while_the_store_is_unreachable(redis_repo: Path, model_root: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    yaml = redis_repo / "feature_store.health_unreachable.yaml"
    yaml.write_text(
        (redis_repo / "feature_store.redis.yaml")
        .read_text()
        .replace("${REDIS_CONNECTION_STRING}", dead)
    )
    settings = settings_for(redis_repo, model_root, yaml.name, device="cpu")
    with TestClient(create_app(settings)) as client:
        ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert ready.json()["checks"] == {"model": "loaded", "feature_store": "unreachable"}
    assert ready.json()["model_version"] == "fraud_model/v1"
