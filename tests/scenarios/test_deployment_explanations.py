"""Every answer of a deployment is explained by the package that decided it, through a real
service process: a challenger's answer, a fallback step's and an ensemble's.

The deployment: an ensemble of v1 and v2 (weights 1 and 2) as the champion and v1b as a
challenger, half and half by card, both requiring the card's history, and the request-time model
rt as the fallback. A payment of a known card is answered by the ensemble or the challenger; a
payment of a card the store has never seen goes down to rt. Each answer's explanation must name
the packages that decided it, and for each: contributions plus expected value equal the raw
score the trees give within 1e-6, and the raw scores give back the score the service answered
(the logistic function of one package's raw score; the weighted mean of the members' for the
ensemble), so the logged input rows are the ones the packages scored.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from scoring_service.core.security import hash_key
from tests.fixtures import service
from tests.fixtures.service import (
    ANALYST_HEADERS,
    ANALYST_KEY,
    API_HEADERS,
    as_request,
    launch_replica,
)

pytestmark = pytest.mark.slow

deployment_packages = service.deployment_packages

DEPLOYMENT = {
    "name": "blend champion, copy challenger, rt fallback",
    "sticky_field": "card_id",
    "salt": "explain-salt",
    "champion": {
        "name": "champion",
        "ensemble": "blend",
        "weight": 0.5,
        "required_views": ["card_features"],
    },
    "challengers": [
        {
            "name": "copy",
            "package": "fraud_model/v1b",
            "weight": 0.5,
            "required_views": ["card_features"],
        }
    ],
    "fallback": [{"name": "request-only", "package": "fraud_model/rt"}],
    "ensembles": {
        "blend": {
            "members": [
                {"package": "fraud_model/v1", "weight": 1},
                {"package": "fraud_model/v2", "weight": 2},
            ],
            "rule": "weighted_mean",
            "thresholds": {"suspicious": 0.3, "highly_suspicious": 0.8},
        }
    },
}
SHARES = {"fraud_model/v1": 1 / 3, "fraud_model/v2": 2 / 3}
TOLERANCE = 1e-6
SCORE_TOLERANCE = 1e-5  # the service scores with float32 ONNX graphs, the explainer in float64


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def replica(sqlite_repo: Path, deployment_packages: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("deployment_explanations")
    file = folder / "deployment.yaml"
    file.write_text(yaml.safe_dump(DEPLOYMENT, sort_keys=False))
    started = launch_replica(
        sqlite_repo,
        sqlite_repo / "feature_store.yaml",
        deployment_packages,
        folder,
        env={"SCORING_ANALYST_KEY_HASHES": hash_key(ANALYST_KEY)},
        deployment=str(file),
        prediction_log_dir=str(folder / "log"),
    )
    started.wait_ready()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def answered(replica: service.Replica, recent: pd.DataFrame) -> dict[str, tuple[str, dict]]:
    """variant -> (transaction id, answer): the first answer of each deciding variant."""
    out: dict[str, tuple[str, dict]] = {}
    with httpx.Client(base_url=replica.url, timeout=30.0) as client:
        bodies = [as_request(row) for _, row in recent.iloc[-40:].iterrows()]
        unseen = {**bodies[0], "card_id": "card_the_store_never_saw"}
        for i, body in enumerate([unseen, *bodies]):
            body = {**body, "transaction_id": f"tx_explained_{i}"}
            response = client.post("/v1/transactions/score", json=body, headers=API_HEADERS)
            assert response.status_code == 200, response.text
            answer = response.json()
            out.setdefault(answer["variant"], (body["transaction_id"], answer))
    return out


def explanation(replica: service.Replica, transaction_id: str) -> dict:
    response = httpx.get(
        f"{replica.url}/v1/transactions/{transaction_id}/explanation",
        params={"top": 200},
        headers=ANALYST_HEADERS,
        timeout=60.0,
    )
    assert response.status_code == 200, response.text
    return response.json()


def check_sums(explained: dict) -> None:
    """Contributions plus expected value equal the raw score, overall and per package."""
    total = explained["expected_value"] + sum(c["contribution"] for c in explained["contributions"])
    assert total == pytest.approx(explained["raw_score"], abs=TOLERANCE)
    weighted = sum(p["weight"] * p["raw_score"] for p in explained["explained_by"])
    assert weighted == pytest.approx(explained["raw_score"], abs=TOLERANCE)


@pytest.mark.parametrize(
    ("variant", "package"),
    [("copy", "fraud_model/v1b"), ("request-only", "fraud_model/rt")],
)
def test_a_single_package_answer_is_explained_by_that_package(
    replica: service.Replica, answered: dict, variant: str, package: str
) -> None:
    assert variant in answered, f"no answer decided by {variant}: {sorted(answered)}"
    transaction_id, answer = answered[variant]
    assert answer["model_version"] == package
    explained = explanation(replica, transaction_id)
    assert (explained["variant"], explained["model_version"]) == (variant, package)
    assert [(p["package"], p["weight"]) for p in explained["explained_by"]] == [(package, 1.0)]
    check_sums(explained)
    assert sigmoid(explained["raw_score"]) == pytest.approx(answer["score"], abs=SCORE_TOLERANCE)


def test_a_fallback_answer_names_why(answered: dict) -> None:
    _, answer = answered["request-only"]
    assert "fallback_required_features_unavailable" in answer["reasons"]


def test_an_ensemble_answer_is_its_members_weighted_contributions(
    replica: service.Replica, answered: dict
) -> None:
    assert "champion" in answered, f"no answer decided by the ensemble: {sorted(answered)}"
    transaction_id, answer = answered["champion"]
    assert answer["model_version"] == "ensemble:blend"
    explained = explanation(replica, transaction_id)
    shares = {p["package"]: p["weight"] for p in explained["explained_by"]}
    assert shares == pytest.approx(SHARES, abs=1e-12)
    check_sums(explained)
    # Each member's own contributions (its weighted ones divided by its share) plus its expected
    # value equal its raw score.
    for member in explained["explained_by"]:
        own = sum(
            c["contribution"] / member["weight"]
            for c in explained["contributions"]
            if c["package"] == member["package"]
        )
        assert member["expected_value"] + own == pytest.approx(member["raw_score"], abs=TOLERANCE)
    blended = sum(p["weight"] * sigmoid(p["raw_score"]) for p in explained["explained_by"])
    assert blended == pytest.approx(answer["score"], abs=SCORE_TOLERANCE)
