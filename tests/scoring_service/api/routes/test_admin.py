"""The admin routes of deployments, through HTTP against the app with its lifespan running:
refusals name their fault and leave the live deployment serving, an apply and a rollback take
effect and are recorded with the key that asked.

Swaps and a rollback under concurrent load, and stickiness across a restart, run against real
service processes in tests/scenarios/test_deployments.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from models.package import MANIFEST_FILE, seal_package
from scoring_service.api.app import create_app
from tests.fixtures.service import (
    ADMIN_HEADERS,
    API_HEADERS,
    SHADOW_DEPLOYMENT,
    SPLIT_DEPLOYMENT,
    as_request,
    settings_for,
)

A = SPLIT_DEPLOYMENT
B = SHADOW_DEPLOYMENT

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


@pytest.fixture(scope="module")
def packages(deployment_packages: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deployment packages plus v1x: v1 with another entity mapping (for a refusal)."""
    root = tmp_path_factory.mktemp("admin_deployments")
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


@pytest.fixture()
def admin(sqlite_repo: Path, packages: Path, tmp_path: Path) -> Iterator[TestClient]:
    """The app serving deployment A."""
    file = tmp_path / "deployment.yaml"
    file.write_text(yaml.safe_dump(A, sort_keys=False))
    app = create_app(settings_for(sqlite_repo, packages, deployment=file))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def bodies(recent: pd.DataFrame) -> list[dict]:
    return [as_request(row) for _, row in recent.tail(20).iterrows()]


def answers(client: TestClient, bodies: list[dict]) -> list[tuple]:
    out = []
    for body in bodies:
        response = client.post("/v1/transactions/score", json=body, headers=API_HEADERS)
        assert response.status_code == 200, response.text
        data = response.json()
        out.append((data["score"], data["label"], data["model_version"]))
    return out


def live_name(client: TestClient) -> str:
    return str(client.get("/admin/deployments", headers=ADMIN_HEADERS).json()["live"]["name"])


def test_refusals_name_the_fault_and_leave_the_live_deployment_serving(
    admin: TestClient, bodies: list[dict]
) -> None:
    before = answers(admin, bodies)
    for deployment, fault in REFUSALS:
        response = admin.post("/admin/deployments", json=deployment, headers=ADMIN_HEADERS)
        assert response.status_code == 409, response.text
        body = response.json()
        assert (body["code"], body["stage"]) == ("deployment_invalid", "deployment")
        assert fault in body["message"], body["message"]
        assert live_name(admin) == A["name"]
    assert answers(admin, bodies) == before
    # A refusal changes nothing, so the history does not record it.
    history = admin.get("/admin/deployments", headers=ADMIN_HEADERS).json()["history"]
    assert [h["action"] for h in history] == ["start"]


def test_apply_and_rollback_take_effect_and_are_recorded(
    admin: TestClient, bodies: list[dict]
) -> None:
    before = answers(admin, bodies)
    assert {version for _, _, version in before} == {"fraud_model/v1", "fraud_model/v1b"}
    applied = admin.post("/admin/deployments", json=B, headers=ADMIN_HEADERS)
    assert applied.status_code == 200, applied.text
    assert applied.json()["live"] == B["name"]
    described = admin.get("/admin/deployments", headers=ADMIN_HEADERS).json()
    assert (described["live"]["name"], described["rollback_to"]) == (B["name"], A["name"])
    assert {version for _, _, version in answers(admin, bodies)} == {"fraud_model/v1b"}

    rolled = admin.post("/admin/deployments/rollback", headers=ADMIN_HEADERS)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["live"] == A["name"]
    assert answers(admin, bodies) == before  # each card back on its variant
    history = admin.get("/admin/deployments", headers=ADMIN_HEADERS).json()["history"]
    assert [h["action"] for h in history] == ["start", "apply", "rollback"]
    assert rolled.json()["history"] == history[-1]
    assert all(h["by"].startswith("key:") for h in history[1:])
