"""Loan applications scored by the service, next to payments, from the domain files alone.

A sample of Feast's credit-scoring data (applicants with and without a credit history) goes
through the loader into a temporary copy of the credit repository, which the plain Feast CLI
applies and materializes; the credit model is trained on it. One app, with its lifespan
running, serves the fraud domain (the session's store and model) and the credit domain side by
side: each its own routes, label vocabulary and metrics. The credit domain declares that a
missing credit history is a reason and not missing evidence, that an unknown ZIP code makes the
evidence thin, and what an unseen category becomes; malformed applications are refused like
malformed payments.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from feature_pipelines.credit.load import HISTORY_FILE, LOANS_FILE, ZIPCODES_FILE, source_dir
from feature_repo.domain import DomainSpec, load_domain
from models.train import train
from scoring_service.api.app import create_app
from scoring_service.api.domain_api import request_body
from tests.conftest import RedisServer
from tests.feature_repo.test_credit_repo import materialized_repo
from tests.fixtures.service import API_HEADERS, settings_for

# The first test builds the fraud session's store and model, and the credit store and model.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

WITH_HISTORY = 300  # applicants with a credit history in the sample, and ...
WITHOUT_HISTORY = 1200  # ... without one: enough rows for a time split with both classes
CREDIT_LABELS = {"approve", "manual_review", "decline", "uncertain"}
ENVELOPE = {"code", "stage", "message", "request_id"}


@pytest.fixture(scope="module")
def credit_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample of the tutorial's files, in their own format, for the loader."""
    source = source_dir()
    loans = pd.read_parquet(source / LOANS_FILE)
    history = pd.read_csv(source / HISTORY_FILE)
    known = loans["dob_ssn"].isin(history["dob_ssn"])
    chosen = pd.concat(
        [loans[known].head(WITH_HISTORY), loans[~known].sample(WITHOUT_HISTORY, random_state=3)]
    )
    zipcodes = pd.read_parquet(source / ZIPCODES_FILE)
    folder = tmp_path_factory.mktemp("credit_service_source")
    chosen.to_parquet(folder / LOANS_FILE, index=False)
    zipcodes[zipcodes["zipcode"].isin(chosen["zipcode"])].to_parquet(
        folder / ZIPCODES_FILE, index=False
    )
    history.to_csv(folder / HISTORY_FILE, index=False)
    return folder


@pytest.fixture(scope="module")
def credit_repo(tmp_path_factory: pytest.TempPathFactory, credit_source: Path) -> Path:
    """The credit repository on the embedded default, loaded, applied and materialized."""
    return materialized_repo(
        tmp_path_factory.mktemp("credit_service"), credit_source, "feature_store.yaml", {}
    )


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, credit_repo: Path, model_root: Path) -> Path:
    """One package root holding the credit model trained here and the session's fraud model."""
    root = tmp_path_factory.mktemp("two_domain_packages")
    train(repo_path=credit_repo, events_path=None, output_root=root, num_boost_round=60)
    shutil.copytree(model_root / "fraud_model", root / "fraud_model")
    return root


@pytest.fixture(scope="module")
def both(sqlite_repo: Path, credit_repo: Path, packages: Path) -> Iterator[TestClient]:
    """One app serving payments (the primary domain) and loan applications."""
    settings = settings_for(sqlite_repo, packages, domains=(sqlite_repo, credit_repo))
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        yield client


@pytest.fixture(scope="module")
def spec(credit_repo: Path) -> DomainSpec:
    return load_domain(credit_repo)


@pytest.fixture(scope="module")
def applications(credit_repo: Path) -> pd.DataFrame:
    """The loaded applications, with whether the store knows their applicant's history."""
    apps = pd.read_parquet(credit_repo / "data" / "loan_applications.parquet")
    history = pd.read_parquet(credit_repo / "data" / "credit_history.parquet")
    apps["has_history"] = apps["dob_ssn"].isin(set(history["dob_ssn"]))
    return apps[apps["person_age"].notna()].sort_values("event_timestamp")


def body_of(spec: DomainSpec, row: pd.Series, **changes: Any) -> dict[str, Any]:
    return {**request_body(spec, row.to_dict()), **changes}


def score(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/loan-applications/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_applicant_without_history_is_scored_with_the_declared_reason(
    both: TestClient, spec: DomainSpec, applications: pd.DataFrame
) -> None:
    row = applications[~applications["has_history"]].iloc[-1]
    answer = score(both, body_of(spec, row))
    assert answer["loan_id"] == str(row["loan_id"])
    assert answer["feature_freshness"]["dob_ssn"]["status"] == "missing"
    assert answer["feature_freshness"]["zipcode"]["status"] == "present"
    # Optional evidence: its absence is a reason, never thin evidence.
    assert "no_credit_history" in answer["reasons"]
    assert answer["label"] in {"approve", "manual_review", "decline"}
    assert 0.0 <= answer["score"] <= 1.0
    assert answer["model_version"] == "credit_model/v1"
    assert answer["variant"] == "champion"


def test_an_applicant_with_history_has_no_such_reason(
    both: TestClient, spec: DomainSpec, applications: pd.DataFrame
) -> None:
    row = applications[applications["has_history"]].iloc[-1]
    answer = score(both, body_of(spec, row))
    assert answer["feature_freshness"]["dob_ssn"]["status"] == "present"
    assert "no_credit_history" not in answer["reasons"]
    assert answer["label"] in CREDIT_LABELS


def test_an_unknown_zipcode_makes_the_evidence_thin(
    both: TestClient, spec: DomainSpec, applications: pd.DataFrame
) -> None:
    row = applications[applications["has_history"]].iloc[-1]
    answer = score(both, body_of(spec, row, zipcode="00000"))
    assert answer["feature_freshness"]["zipcode"]["status"] == "missing"
    assert "unknown_zipcode" in answer["reasons"]
    # max_unknown_entities 0: uncertain, unless the application scores as a decline anyway.
    if answer["label"] != "decline":
        assert answer["label"] == "uncertain"
        assert answer["reasons"][0] == "insufficient_evidence"


def test_unseen_categories_are_treated_as_declared(
    both: TestClient, spec: DomainSpec, applications: pd.DataFrame
) -> None:
    row = applications[applications["has_history"]].iloc[-1]
    # person_home_ownership: unknown values are scored as OTHER.
    castle = score(both, body_of(spec, row, person_home_ownership="CASTLE"))
    other = score(both, body_of(spec, row, person_home_ownership="OTHER"))
    assert castle["score"] == other["score"] and castle["label"] == other["label"]
    # loan_intent: unknown values are scored as unknown (missing), not refused.
    unseen = score(both, body_of(spec, row, loan_intent="SPACE_TRAVEL"))
    assert unseen["score"] is not None and unseen["label"] in CREDIT_LABELS


MALFORMED = [
    ("too_young", {"person_age": 17}, "person_age", "greater than or equal to 18"),
    ("age_not_whole", {"person_age": 30.5}, "person_age", "valid integer"),
    ("zipcode_shape", {"zipcode": "7610"}, "zipcode", "pattern"),
    ("applicant_shape", {"dob_ssn": "1953-02-19"}, "dob_ssn", "pattern"),
    ("rate_not_number", {"loan_int_rate": "high"}, "loan_int_rate", "valid number"),
    ("no_loan", {"loan_amnt": 0}, "loan_amnt", "greater than 0"),
    ("extra_field", {"ssn": "123"}, "ssn", "not a field of this request"),
]


@pytest.mark.parametrize(
    ("case", "change", "field", "text"), MALFORMED, ids=[c[0] for c in MALFORMED]
)
def test_malformed_applications_are_refused_naming_the_field(
    both: TestClient,
    spec: DomainSpec,
    applications: pd.DataFrame,
    case: str,
    change: dict,
    field: str,
    text: str,
) -> None:
    body = body_of(spec, applications.iloc[-1], **change)
    response = both.post("/v1/loan-applications/score", json=body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert set(answer) == ENVELOPE  # the same envelope as every other refusal
    assert (answer["code"], answer["stage"]) == ("invalid_request", "request")
    assert answer["message"].startswith(f"{field}: ")
    assert text in answer["message"]
    assert answer["request_id"] == response.headers["x-request-id"]


def test_a_missing_field_is_named(
    both: TestClient, spec: DomainSpec, applications: pd.DataFrame
) -> None:
    body = body_of(spec, applications.iloc[-1])
    del body["loan_amnt"]
    response = both.post("/v1/loan-applications/score", json=body)
    assert response.status_code == 422
    assert response.json()["message"] == "loan_amnt: is required"


def test_a_batch_of_applications(
    both: TestClient, spec: DomainSpec, applications: pd.DataFrame
) -> None:
    rows = applications.tail(5)
    body = {"loan_applications": [body_of(spec, row) for _, row in rows.iterrows()]}
    response = both.post("/v1/loan-applications/score-batch", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["loan_id"] for r in results] == [str(v) for v in rows["loan_id"]]
    assert {r["label"] for r in results} <= CREDIT_LABELS
    wrong = {"transactions": body["loan_applications"]}
    assert both.post("/v1/loan-applications/score-batch", json=wrong).status_code == 422


def test_one_process_serves_both_domains(
    both: TestClient, valid_body: dict, spec: DomainSpec, applications: pd.DataFrame
) -> None:
    payment = both.post("/v1/transactions/score", json=valid_body)
    assert payment.status_code == 200, payment.text
    assert payment.json()["label"] in {"not_fraud", "suspicious", "highly_suspicious", "uncertain"}
    assert payment.json()["model_version"] == "fraud_model/v1"
    score(both, body_of(spec, applications.iloc[-1]))
    # Neither domain's body is the other's.
    crossed = both.post("/v1/loan-applications/score", json=valid_body)
    assert crossed.status_code == 422
    metrics = both.get("/metrics").text
    for domain in ("credit", "fraud"):
        assert any(
            line.startswith("scoring_request_seconds_count{")
            and f'domain="{domain}"' in line
            and 'route="score"' in line
            for line in metrics.splitlines()
        ), domain
    assert 'scoring_labels_total{label="uncertain",model_version="credit_model/v1"}' in metrics
    document = both.get("/openapi.json").json()
    operation = document["paths"]["/v1/loan-applications/score"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/LoanApplication"
    }
    labels = document["components"]["schemas"]["LoanApplicationScoreResponse"]["properties"]
    assert labels["label"]["enum"] == ["approve", "manual_review", "decline", "uncertain"]
    assert both.get("/health/ready").status_code == 200


@pytest.fixture(scope="module")
def credit_redis_repo(
    tmp_path_factory: pytest.TempPathFactory, credit_source: Path, redis_server: RedisServer
) -> Iterator[Path]:
    """The same sample applied and materialized into a real redis-server."""
    env = {"REDIS_CONNECTION_STRING": redis_server.connection_string}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_CONNECTION_STRING", redis_server.connection_string)
        yield materialized_repo(
            tmp_path_factory.mktemp("credit_service_redis"),
            credit_source,
            "feature_store.redis.yaml",
            env,
        )


@pytest.mark.redis
def test_applications_are_scored_from_redis(
    credit_redis_repo: Path, packages: Path, spec: DomainSpec, applications: pd.DataFrame
) -> None:
    settings = settings_for(
        credit_redis_repo, packages, domains=(credit_redis_repo,), feature_store_variant="redis"
    )
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        without = applications[~applications["has_history"]].iloc[-1]
        answer = score(client, body_of(spec, without))
        assert "no_credit_history" in answer["reasons"]
        assert answer["feature_freshness"]["zipcode"]["status"] == "present"
        assert answer["label"] in {"approve", "manual_review", "decline"}
