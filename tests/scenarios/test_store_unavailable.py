"""The online store cannot be reached: 503 feature_store_unavailable, readiness false."""

from __future__ import annotations

from fastapi.testclient import TestClient

from scoring_service.api.app import create_app
from tests.conftest import free_port
from tests.fixtures.service import API_HEADERS, settings_for


def test_unreachable_redis(redis_repo, model_root, valid_body) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    yaml = redis_repo / "feature_store.unreachable.yaml"
    yaml.write_text(
        (redis_repo / "feature_store.redis.yaml")
        .read_text()
        .replace("${REDIS_CONNECTION_STRING}", dead)
    )
    settings = settings_for(redis_repo, model_root, yaml.name)
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["feature_store"] == "unreachable"
        response = client.post("/v1/transactions/score", json=valid_body)
        assert response.status_code == 503
        body = response.json()
        assert body["code"] == "feature_store_unavailable"
        assert body["stage"] == "features"
        assert "Traceback" not in body["message"] and "Error" not in body["message"]
