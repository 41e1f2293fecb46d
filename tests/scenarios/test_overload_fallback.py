"""A feature read that misses its deadline goes down the deployment's fallback chain, as a store
outage does: a real service process over a real redis-server that stops answering for a while
(``CLIENT PAUSE``), a deployment whose last fallback step (``fraud_model/rt``) reads nothing
from the store. Every call made while the store is paused is answered 200 by that step, within
its deadline plus a bound; once the store answers again, the variants answer again.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis
import yaml

from tests.conftest import RedisServer, free_port
from tests.fixtures import service
from tests.fixtures.load import LATE_BOUND_S
from tests.fixtures.service import API_HEADERS, SPLIT_DEPLOYMENT, as_request, launch_replica

pytestmark = pytest.mark.redis

deployment_packages = service.deployment_packages

DEADLINE_MS = 300
# A read of the paused store lasts this long (the store's socket timeout): far above the
# deadline, so an answer that waited for the read instead of taking the fallback fails.
STORE_TIMEOUT_MS = 8_000
PAUSE_MS = 30_000
CALLS = 8


@pytest.fixture()
def paused_redis(
    redis_server: RedisServer, redis_repo: Path, tmp_path: Path
) -> Iterator[tuple[RedisServer, Path]]:
    """A redis-server of this test's own with the session store's data (the test pauses it),
    and a feature_store.yaml pointing at it."""
    source = redis.Redis(port=redis_server.port)
    source.save()
    source.close()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    shutil.copy(redis_server.workdir / "dump.rdb", workdir / "dump.rdb")
    server = RedisServer(port=free_port(), workdir=workdir)
    server.start()
    try:
        store_yaml = redis_repo / f"feature_store.paused-{server.port}.yaml"
        store_yaml.write_text(
            (redis_repo / "feature_store.redis.yaml")
            .read_text()
            .replace("${REDIS_CONNECTION_STRING}", server.connection_string)
        )
        yield server, store_yaml
        store_yaml.unlink()
    finally:
        server.stop()


def test_read_past_deadline_answers_from_store_free_fallback(
    paused_redis: tuple[RedisServer, Path],
    redis_repo: Path,
    deployment_packages: Path,
    recent: pd.DataFrame,
    tmp_path: Path,
) -> None:
    server, store_yaml = paused_redis
    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(yaml.safe_dump(SPLIT_DEPLOYMENT, sort_keys=False))
    replica = launch_replica(
        redis_repo,
        store_yaml,
        deployment_packages,
        tmp_path,
        deployment=str(deployment),
        store_timeout_ms=str(STORE_TIMEOUT_MS),
        outage_policy="fail",
    )
    replica.wait_ready()
    bodies = [as_request(row) for _, row in recent.tail(CALLS).iterrows()]
    headers = {**API_HEADERS, "X-Deadline-Ms": str(DEADLINE_MS)}
    control = redis.Redis(port=server.port)
    try:
        with httpx.Client(base_url=replica.url, timeout=30) as client:
            before = [
                client.post("/v1/transactions/score", json=b, headers=headers) for b in bodies
            ]
            assert [r.status_code for r in before] == [200] * CALLS, before[0].text
            assert {r.json()["variant"] for r in before} <= {"champion", "copy"}

            control.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
            paused_at = time.monotonic()
            during = []
            for body in bodies:
                sent = time.monotonic()
                response = client.post("/v1/transactions/score", json=body, headers=headers)
                during.append((response, time.monotonic() - sent))
            assert time.monotonic() - paused_at < PAUSE_MS / 1000, "calls outlived the pause"
            for response, took in during:
                assert response.status_code == 200, response.text
                answer = response.json()
                assert answer["model_version"] == "fraud_model/rt"
                assert answer["variant"] == "request-only"
                assert "fallback_feature_store_unavailable" in answer["reasons"]
                assert took < DEADLINE_MS / 1000 + LATE_BOUND_S
            control.execute_command("CLIENT", "UNPAUSE")

            # The store answers again: the variants answer again (after the circuit's pause,
            # if the misses opened it).
            deadline = time.monotonic() + 60
            while True:
                again = client.post("/v1/transactions/score", json=bodies[0], headers=headers)
                assert again.status_code == 200, again.text
                if again.json()["variant"] in {"champion", "copy"}:
                    break
                assert time.monotonic() < deadline, "the variants never answered again"
                time.sleep(0.2)
            metrics = client.get("/metrics").text
            assert "scoring_unread_fallback_answers_total" in metrics
    finally:
        control.execute_command("CLIENT", "UNPAUSE")
        control.close()
        replica.stop()
