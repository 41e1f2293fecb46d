"""The score routes: what each scoring callable answers (one object, an entity, a batch built
from columns), what it hands to the prediction log, the batch limit, and the documented FastAPI
routes as a working reference over the same callables.

The app runs on the session's SQLite store and model package with the prediction log on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import orjson
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Route

from scoring_service.api.app import create_app, install_error_handlers
from scoring_service.api.endpoints import ScoreEndpoint
from scoring_service.api.routes import score
from scoring_service.core.schemas import EntityFreshness
from scoring_service.stages.features import MISSING, NOT_REQUESTED, PRESENT
from scoring_service.stages.outcomes import Scored, ScoredColumns
from tests.fixtures.service import API_HEADERS, as_request, settings_for

SCORE = "/v1/transactions/score"
BATCH = "/v1/transactions/score-batch"
MAX_BATCH = 5


@pytest.fixture(scope="module")
def http(sqlite_repo: Path, model_root: Path, tmp_path_factory) -> Iterator[TestClient]:
    settings = settings_for(
        sqlite_repo,
        model_root,
        max_batch_size=MAX_BATCH,
        prediction_log_dir=tmp_path_factory.mktemp("score_routes_log"),
    )
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        yield client


def test_batch_json_from_columns() -> None:
    columns = ScoredColumns(
        scores=[0.125, 0.75],
        labels=["approve", "decline"],
        reasons=[[], ["large_claim"]],
        status={"policy_id": [PRESENT, MISSING], "zipcode": [NOT_REQUESTED, PRESENT]},
        age_seconds={"policy_id": [12.3456, math.nan], "zipcode": [math.nan, 0.5]},
        model_versions=["claims_model/v1", "claims_model/v2"],
    )
    body = orjson.loads(score.batch_json(["c1", "c2"], columns, "claims", "req-9", "claim_id"))
    assert body == {
        "results": [
            {
                "claim_id": "c1",
                "score": 0.125,
                "label": "approve",
                "reasons": [],
                "model_version": "claims_model/v1",
                "variant": "champion",
                "feature_freshness": {
                    "policy_id": {"status": "present", "age_seconds": 12.346},
                    "zipcode": {"status": "not_requested", "age_seconds": None},
                },
            },
            {
                "claim_id": "c2",
                "score": 0.75,
                "label": "decline",
                "reasons": ["large_claim"],
                "model_version": "claims_model/v2",
                "variant": "champion",
                "feature_freshness": {
                    "policy_id": {"status": "missing", "age_seconds": None},
                    "zipcode": {"status": "present", "age_seconds": 0.5},
                },
            },
        ],
        "model_version": "claims",
        "request_id": "req-9",
    }


def test_batch_json_from_rows_keeps_each_rows_variant_and_version() -> None:
    rows = [
        Scored(None, "uncertain", ["feature_store_unavailable"], {}, variant="champion"),
        Scored(
            0.5,
            "review",
            [],
            {"policy_id": EntityFreshness(status="stale", age_seconds=99.0)},
            variant="canary",
            model_version="claims_model/v3",
        ),
    ]
    body = orjson.loads(score.batch_json(["a", "b"], rows, "claims_model/v1", "r", "claim_id"))
    first, second = body["results"]
    assert (first["score"], first["model_version"], first["variant"]) == (
        None,
        "claims_model/v1",
        "champion",
    )
    assert (second["model_version"], second["variant"]) == ("claims_model/v3", "canary")
    assert second["feature_freshness"] == {"policy_id": {"status": "stale", "age_seconds": 99.0}}


def test_the_documented_routes_are_the_served_ones(http: TestClient) -> None:
    app = http.app
    served = {
        (route.path, route.name, tuple(sorted(route.methods or ())))
        for route in app.router.routes  # type: ignore[attr-defined]
        if isinstance(route, Route) and isinstance(route.app, ScoreEndpoint)
    }
    domains = list(app.state.domains.values())  # type: ignore[attr-defined]
    documented = score.documented_router(domains, MAX_BATCH).routes
    assert {(r.path, tuple(sorted(r.methods))) for r in documented} == {  # type: ignore[attr-defined]
        (path, tuple(m for m in methods if m != "HEAD")) for path, _, methods in served
    }
    assert {name for _, name, _ in served} == {
        "score",
        "score_batch",
        "score_ip_address",
        "score_card",
        "score_merchant",
    }
    errors = score.errors_of(app.state.primary.api)  # type: ignore[attr-defined]
    assert set(errors) == {401, 403, 413, 422, 503}
    assert "not a valid transaction" in errors[422]["description"]


def test_one_object_is_answered_and_logged(http: TestClient, valid_body: dict) -> None:
    response = http.post(SCORE, json=valid_body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert list(answer)[:1] == ["transaction_id"]  # the business id first
    assert answer["transaction_id"] == valid_body["transaction_id"]
    assert answer["request_id"] == response.headers["x-request-id"]
    assert (answer["model_version"], answer["variant"]) == ("fraud_model/v1", "champion")
    assert set(answer["feature_freshness"]) == {"ip_address", "card_id", "merchant_id"}
    logged = http.app.state.primary.answers.recent.get(valid_body["transaction_id"])  # type: ignore[attr-defined]
    assert logged is not None
    assert logged.request_id == answer["request_id"]
    assert (logged.score, logged.label, logged.reasons) == (
        answer["score"],
        answer["label"],
        answer["reasons"],
    )
    assert logged.keys["card_id"] == valid_body["card_id"]


def test_an_entity_is_answered_for_its_key_alone(http: TestClient, recent: pd.DataFrame) -> None:
    card = recent.iloc[-1].card_id
    before = len(http.app.state.primary.answers.recent)  # type: ignore[attr-defined]
    response = http.get(f"/v1/cards/{card}/score")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["entity"], answer["entity_id"]) == ("card", card)
    assert {k: v["status"] for k, v in answer["feature_freshness"].items()} == {
        "ip_address": "not_requested",
        "card_id": "present",
        "merchant_id": "not_requested",
    }
    assert 0.0 <= answer["score"] <= 1.0
    # Logged, but with no business object to explain: not in the index by id.
    assert len(http.app.state.primary.answers.recent) == before  # type: ignore[attr-defined]


def test_a_batch_answers_in_order_and_logs_every_object(
    http: TestClient, recent: pd.DataFrame
) -> None:
    bodies = [
        {**as_request(row), "transaction_id": f"tx_score_route_{i}"}
        for i, (_, row) in enumerate(recent.tail(MAX_BATCH).iterrows())
    ]
    response = http.post(BATCH, json={"transactions": bodies})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["transaction_id"] for r in body["results"]] == [b["transaction_id"] for b in bodies]
    assert body["model_version"] == "fraud_model/v1"
    assert body["request_id"] == response.headers["x-request-id"]
    recent_answers = http.app.state.primary.answers.recent  # type: ignore[attr-defined]
    for result in body["results"]:
        logged = recent_answers.get(result["transaction_id"])
        assert logged is not None and logged.request_id == body["request_id"]
        assert logged.score == result["score"]


def test_a_batch_past_the_configured_limit_is_refused(http: TestClient, valid_body: dict) -> None:
    bodies = [{**valid_body, "transaction_id": f"t{i}"} for i in range(MAX_BATCH + 1)]
    response = http.post(BATCH, json={"transactions": bodies})
    assert response.status_code == 413
    assert response.json()["code"] == "batch_too_large"
    assert response.json()["message"] == (
        f"A batch may hold at most {MAX_BATCH} transactions, this one has {MAX_BATCH + 1}; "
        "split it into smaller calls."
    )


def timeless(answer: dict) -> tuple[dict, list[float | None]]:
    """An answer without its request id and its row ages, and those ages in order."""
    ages: list[float | None] = []

    def strip(node: object) -> object:
        if isinstance(node, dict):
            if "age_seconds" in node:
                ages.append(node["age_seconds"])
            return {k: strip(v) for k, v in node.items() if k not in ("age_seconds", "request_id")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(answer), ages  # type: ignore[return-value]


def test_the_documented_routes_answer_what_the_served_ones_answer(
    http: TestClient, recent: pd.DataFrame
) -> None:
    """Mounted on a bare FastAPI app over the same state, the documented definitions score
    through the same callables: the same answers, field for field."""
    app = http.app
    reference = FastAPI()
    install_error_handlers(reference)
    for name in ("settings", "keyring", "guard", "primary", "domains"):
        setattr(reference.state, name, getattr(app.state, name))  # type: ignore[attr-defined]
    domains = list(app.state.domains.values())  # type: ignore[attr-defined]
    reference.include_router(score.documented_router(domains, MAX_BATCH))
    row = recent.iloc[-2]
    body = as_request(row)
    with TestClient(reference, headers=API_HEADERS) as documented:
        calls = [
            ("post", SCORE, {"json": body}),
            ("post", BATCH, {"json": {"transactions": [body]}}),
            ("get", f"/v1/merchants/{row.merchant_id}/score", {}),
        ]
        for method, path, options in calls:
            served = getattr(http, method)(path, **options)
            answered = getattr(documented, method)(path, **options)
            assert served.status_code == answered.status_code == 200, answered.text
            mine, my_ages = timeless(served.json())
            theirs, their_ages = timeless(answered.json())
            assert theirs == mine, path
            # Row ages count from the moment of each read: a few milliseconds apart.
            assert their_ages == pytest.approx(my_ages, abs=5.0), path
        refused = documented.post(SCORE, json=body, headers={"X-API-Key": "not-a-key"})
        assert (refused.status_code, refused.json()["code"]) == (401, "unauthorized")
