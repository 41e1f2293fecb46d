"""The explanation route of each served domain: analyst keys only, the business id checked as
the request field it is, ``top`` bounded, the logged answer explained in the domain's words, and
refusals when there is no log, no such answer or no explainer.

The app runs on the session's SQLite store and model package; answers are logged by scoring
them through the app first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from models.package import read_manifest
from scoring_service.api.app import create_app
from scoring_service.api.routes.explanations import TOP_DEFAULT, TOP_MAX
from tests.fixtures.service import ANALYST_HEADERS, API_HEADERS, as_request, settings_for

SCORE = "/v1/transactions/score"


def explanation_path(transaction_id: str) -> str:
    return f"/v1/transactions/{transaction_id}/explanation"


@pytest.fixture(scope="module")
def http(sqlite_repo: Path, model_root: Path, tmp_path_factory) -> Iterator[TestClient]:
    log = tmp_path_factory.mktemp("explanation_route_log")
    settings = settings_for(sqlite_repo, model_root, prediction_log_dir=log)
    with TestClient(create_app(settings), headers=ANALYST_HEADERS) as client:
        yield client


@pytest.fixture(scope="module")
def scored(http: TestClient, recent: pd.DataFrame) -> tuple[dict, dict, str]:
    """A payment scored through the app: (its body, the answer, the answer's request id)."""
    body = {**as_request(recent.iloc[-3]), "transaction_id": "tx_explained_by_the_route"}
    response = http.post(SCORE, json=body, headers=API_HEADERS)
    assert response.status_code == 200, response.text
    return body, response.json(), response.headers["x-request-id"]


def test_the_logged_answer_is_explained(http: TestClient, scored: tuple[dict, dict, str]) -> None:
    body, answer, request_id = scored
    response = http.get(explanation_path(body["transaction_id"]), params={"top": 3})
    assert response.status_code == 200, response.text
    explanation = response.json()
    assert explanation["transaction_id"] == body["transaction_id"]
    assert explanation["request_id"] == request_id
    assert (explanation["model_version"], explanation["variant"]) == ("fraud_model/v1", "champion")
    assert explanation["score"] == pytest.approx(answer["score"], abs=1e-12)
    assert (explanation["label"], explanation["reasons"]) == (answer["label"], answer["reasons"])
    assert {k: v["status"] for k, v in explanation["feature_freshness"].items()} == {
        k: v["status"] for k, v in answer["feature_freshness"].items()
    }
    contributions = explanation["contributions"]
    assert len(contributions) == 3
    sizes = [abs(c["contribution"]) for c in contributions]
    assert sizes == sorted(sizes, reverse=True)
    assert all(c["text"] for c in contributions)
    # The trees' raw score is the served score's log-odds (the ONNX graph answers in float32).
    score = explanation["score"]
    assert explanation["raw_score"] == pytest.approx(math.log(score / (1 - score)), abs=1e-3)


def test_top_defaults_and_is_bounded(
    http: TestClient, scored: tuple[dict, dict, str], model_root: Path
) -> None:
    path = explanation_path(scored[0]["transaction_id"])
    assert len(http.get(path).json()["contributions"]) == TOP_DEFAULT
    inputs = read_manifest(model_root / "fraud_model" / "v1").features
    everything = http.get(path, params={"top": TOP_MAX}).json()["contributions"]
    assert len(inputs) < TOP_MAX
    assert sorted(c["feature"] for c in everything) == sorted(inputs)  # every input, no more
    for top in (0, TOP_MAX + 1, "five"):
        refused = http.get(path, params={"top": top})
        assert refused.status_code == 422, top
        assert refused.json()["code"] == "invalid_request"
        assert refused.json()["message"].startswith("top: ")


def test_only_analyst_keys_and_well_formed_ids(http: TestClient) -> None:
    path = explanation_path("tx_any")
    scoring_key = http.get(path, headers=API_HEADERS)
    assert scoring_key.status_code == 403
    assert scoring_key.json()["message"] == (
        "This key may not call explanation routes; use an analyst key."
    )
    malformed = http.get(explanation_path("tx any"))
    assert malformed.status_code == 422
    assert malformed.json()["message"].startswith("transaction_id: ")


def test_an_answer_never_logged_is_named(http: TestClient) -> None:
    response = http.get(explanation_path("tx_never_scored_here"))
    assert response.status_code == 404
    body = response.json()
    assert (body["code"], body["stage"]) == ("answer_not_logged", "explanation")
    assert body["message"].startswith("No logged answer for transaction_id 'tx_never_scored_here'")


def test_without_an_explainer_the_route_is_not_ready(http: TestClient) -> None:
    primary = http.app.state.primary  # type: ignore[attr-defined]
    explainer, primary.explainer = primary.explainer, None
    try:
        response = http.get(explanation_path("tx_any"))
    finally:
        primary.explainer = explainer
    assert response.status_code == 503 and response.json()["code"] == "not_ready"


def test_a_service_without_a_log_explains_nothing(sqlite_repo: Path, model_root: Path) -> None:
    app = create_app(settings_for(sqlite_repo, model_root))
    with TestClient(app, headers=ANALYST_HEADERS) as client:
        assert app.url_path_for("explain_transaction", transaction_id="tx_1") == (
            explanation_path("tx_1")
        )
        response = client.get(explanation_path("tx_1"))
    assert response.status_code == 404
    assert response.json()["message"] == (
        "Explanations read the prediction log, and this service keeps none; set "
        "SCORING_PREDICTION_LOG_DIR."
    )
