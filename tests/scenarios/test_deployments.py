"""Deployments through real service processes: sticky variants across calls and a restart, and
swaps plus a rollback under concurrent load with no failed answer.

The admin routes' refusals and records are tested in process, in
tests/scoring_service/api/routes/test_admin.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from tests.fixtures import service
from tests.fixtures.load import Load
from tests.fixtures.service import (
    ADMIN_HEADERS,
    API_HEADERS,
    SHADOW_DEPLOYMENT,
    SPLIT_DEPLOYMENT,
    Replica,
    as_request,
    launch_replica,
)

pytestmark = pytest.mark.slow

# The packages deployments are made of: v1, v1b (v1 under another version) and rt (a model of
# request-time features), a session fixture of the service's own the scenarios' conftest does
# not carry.
deployment_packages = service.deployment_packages

A = SPLIT_DEPLOYMENT
B = SHADOW_DEPLOYMENT
CALLERS = 16
CALL_TIMEOUT_S = 30.0  # per request of the load; its threads are joined within it on the way out


def start(sqlite_repo: Path, packages: Path, tmp_path: Path, deployment: dict) -> Replica:
    file = tmp_path / "deployment.yaml"
    file.write_text(yaml.safe_dump(deployment, sort_keys=False))
    replica = launch_replica(
        sqlite_repo,
        sqlite_repo / "feature_store.yaml",
        packages,
        tmp_path,
        deployment=str(file),
    )
    replica.wait_ready()
    return replica


def answers(client: httpx.Client, bodies: list[dict]) -> list[tuple]:
    out = []
    for body in bodies:
        response = client.post("/v1/transactions/score", json=body, headers=API_HEADERS)
        assert response.status_code == 200, response.text
        data = response.json()
        out.append((data["score"], data["label"], data["model_version"]))
    return out


def test_sticky_across_calls_and_restarts(
    sqlite_repo: Path, deployment_packages: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    bodies = [as_request(row) for _, row in recent.drop_duplicates("card_id").tail(40).iterrows()]
    replica = start(sqlite_repo, deployment_packages, tmp_path, A)
    try:
        with httpx.Client(base_url=replica.url, timeout=30) as client:
            first = answers(client, bodies)
            assert {version for _, _, version in first} == {"fraud_model/v1", "fraud_model/v1b"}
            assert all(answers(client, bodies) == first for _ in range(2))
            one = bodies[0]
            versions = {answers(client, [one])[0][2] for _ in range(100)}
            assert versions == {first[0][2]}
    finally:
        replica.stop()
    again = start(sqlite_repo, deployment_packages, tmp_path, A)
    try:
        with httpx.Client(base_url=again.url, timeout=30) as client:
            assert answers(client, bodies) == first
    finally:
        again.stop()


def test_swaps_and_a_rollback_under_load(
    sqlite_repo: Path, deployment_packages: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    """16 callers score without pause while the deployment is swapped five times and rolled
    back once: every answer is a 2xx, and afterwards each card is back on its variant. The
    callers are stopped and joined however the block is left (``Load``)."""
    bodies = [as_request(row) for _, row in recent.tail(60).iterrows()]
    replica = start(sqlite_repo, deployment_packages, tmp_path, A)
    try:
        with httpx.Client(base_url=replica.url, timeout=60) as client:
            before = answers(client, bodies[:20])
            with Load(
                replica.url, bodies, threads=CALLERS, timeout_s=CALL_TIMEOUT_S, pause_s=0
            ) as load:
                sequence = [B, {**A, "name": "half and half again"}, B, A, B]
                for deployment in sequence:
                    response = client.post(
                        "/admin/deployments", json=deployment, headers=ADMIN_HEADERS
                    )
                    assert response.status_code == 200, response.text
                rolled = client.post("/admin/deployments/rollback", headers=ADMIN_HEADERS)
                assert rolled.status_code == 200, rolled.text
                assert rolled.json()["live"] == A["name"]
            assert load.alive == 0, "callers still running after the load was stopped"
            assert load.answers, "the callers sent nothing"
            failed = [a.status for a in load.answers if not 200 <= a.status < 300]
            print(
                f"\n{len(load.answers)} answers during 5 swaps and a rollback, "
                f"{len(failed)} not 2xx, {len(load.failures)} without an answer"
            )
            assert failed == [] and load.failures == []
            assert answers(client, bodies[:20]) == before
            history = client.get("/admin/deployments", headers=ADMIN_HEADERS).json()["history"]
            assert [h["action"] for h in history] == ["start"] + ["apply"] * 5 + ["rollback"]
            assert all(h["by"].startswith("key:") for h in history[1:])
    finally:
        replica.stop()
