"""Deployments through a real service process: sticky variants across calls and a restart,
refusals that leave the live deployment serving, and swaps plus a rollback under concurrent
load with no failed answer."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from models.package import MANIFEST_FILE, seal_package
from tests.fixtures.service import Replica, launch_replica
from tests.scoring_service.conftest import ADMIN_HEADERS, API_HEADERS, as_request

pytestmark = pytest.mark.slow

A = {
    "name": "half and half",
    "sticky_field": "card_id",
    "salt": "test-salt",
    "champion": {"name": "champion", "package": "fraud_model/v1", "weight": 0.5},
    "challengers": [{"name": "copy", "package": "fraud_model/v1b", "weight": 0.5}],
    "fallback": [{"name": "request-only", "package": "fraud_model/rt"}],
}
B = {
    "name": "copy alone, rt in shadow",
    "sticky_field": "card_id",
    "salt": "other-salt",
    "champion": {"name": "champion", "package": "fraud_model/v1b", "weight": 1.0},
    "shadows": [{"name": "rt-shadow", "package": "fraud_model/rt"}],
}


@pytest.fixture(scope="module")
def packages(deployment_packages: Path, tmp_path_factory) -> Path:
    """The deployment packages plus v1x: v1 with another entity mapping (for a refusal)."""
    root = tmp_path_factory.mktemp("deployments_api")
    shutil.copytree(deployment_packages, root, dirs_exist_ok=True)
    target = root / "fraud_model" / "v1x"
    shutil.copytree(root / "fraud_model" / "v1", target)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["version"] = "v1x"
    mapping = manifest["entity_mapping"]
    manifest["entity_mapping"] = {
        ("card_ref" if k == "card_id" else k): v for k, v in mapping.items()
    }
    (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    seal_package(target)
    return root


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
    sqlite_repo: Path, packages: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    bodies = [as_request(row) for _, row in recent.drop_duplicates("card_id").tail(40).iterrows()]
    replica = start(sqlite_repo, packages, tmp_path, A)
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
    again = start(sqlite_repo, packages, tmp_path, A)
    try:
        with httpx.Client(base_url=again.url, timeout=30) as client:
            assert answers(client, bodies) == first
    finally:
        again.stop()


REFUSALS = [
    ({**A, "champion": {"name": "champion", "package": "fraud_model/v9", "weight": 0.5}},
     "package fraud_model/v9"),
    ({**A, "champion": {"name": "champion", "package": "fraud_model/v1", "weight": 0.4}},
     "sum to 0.9, not 1"),
    ({**A, "fallback": [{"name": "a", "package": "fraud_model/rt"},
                        {"name": "b", "package": "fraud_model/rt"}]},
     "fallback cycle"),
    ({**A, "ensembles": {"e": {"members": [{"package": "fraud_model/v1"},
                                           {"package": "fraud_model/v1x"}],
                               "thresholds": {"suspicious": 0.3, "highly_suspicious": 0.8}}},
       "shadows": [{"name": "e-shadow", "ensemble": "e"}]},
     "maps requests to other entities"),
    ({**A, "sticky_field": "customer_id"}, "sticky_field 'customer_id' is not a request field"),
]  # fmt: skip


def test_refusals_and_swaps_under_load(
    sqlite_repo: Path, packages: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    bodies = [as_request(row) for _, row in recent.tail(60).iterrows()]
    replica = start(sqlite_repo, packages, tmp_path, A)
    try:
        with httpx.Client(base_url=replica.url, timeout=60) as client:
            before = answers(client, bodies[:20])
            for deployment, fault in REFUSALS:
                response = client.post("/admin/deployments", json=deployment, headers=ADMIN_HEADERS)
                assert response.status_code == 409, response.text
                body = response.json()
                assert (body["code"], body["stage"]) == ("deployment_invalid", "deployment")
                assert fault in body["message"], body["message"]
                live = client.get("/admin/deployments", headers=ADMIN_HEADERS).json()["live"]
                assert live["name"] == A["name"]

            # 16 callers score without pause while the deployment is swapped five times and
            # rolled back once.
            stop = threading.Event()
            statuses: list[int] = []
            lock = threading.Lock()

            def caller(offset: int) -> None:
                with httpx.Client(base_url=replica.url, timeout=60) as own:
                    i = offset
                    while not stop.is_set():
                        response = own.post(
                            "/v1/transactions/score",
                            json=bodies[i % len(bodies)],
                            headers=API_HEADERS,
                        )
                        with lock:
                            statuses.append(response.status_code)
                        i += 1

            with ThreadPoolExecutor(16) as pool:
                for n in range(16):
                    pool.submit(caller, n)
                sequence = [B, {**A, "name": "half and half again"}, B, A, B]
                for deployment in sequence:
                    response = client.post(
                        "/admin/deployments", json=deployment, headers=ADMIN_HEADERS
                    )
                    assert response.status_code == 200, response.text
                rolled = client.post("/admin/deployments/rollback", headers=ADMIN_HEADERS)
                assert rolled.status_code == 200, rolled.text
                assert rolled.json()["live"] == A["name"]
                stop.set()
            assert statuses, "the callers sent nothing"
            failed = [s for s in statuses if not 200 <= s < 300]
            print(f"\n{len(statuses)} answers during 5 swaps and a rollback, {len(failed)} not 2xx")
            assert failed == []
            assert answers(client, bodies[:20]) == before
            history = client.get("/admin/deployments", headers=ADMIN_HEADERS).json()["history"]
            assert [h["action"] for h in history] == ["start"] + ["apply"] * 5 + ["rollback"]
            assert all(h["by"].startswith("key:") for h in history[1:])
    finally:
        replica.stop()
