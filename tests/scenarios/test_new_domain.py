"""A third domain, made up here, goes from files to HTTP answers without a line of code changed.

Everything a new domain needs lives in one temporary folder: its ``domain.yaml`` (insurance
claims: a policy entity with a route, a claimed amount, a channel category, three labels), its
Feast definitions and ``feature_store.yaml``, and small parquet tables (policy snapshots,
labelled claims). The plain Feast CLI applies and materializes it, ``models.train.train`` trains
it from its domain file, and the service serves it with the settings alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from feature_repo import clock
from feature_repo.domain import load_domain
from models.train import train
from scoring_service.api.app import create_app
from tests.conftest import feast_cli
from tests.fixtures.service import API_HEADERS, settings_for

pytestmark = [pytest.mark.clock, pytest.mark.slow, pytest.mark.timeout(900)]

DOMAIN_YAML = """\
name: claims
description: Insurance claims scored for fraud before they are paid.
resource: insurance-claims
business_id: claim_id
object_name: insurance claim
score_description: Probability that the claim is fraudulent, in [0, 1].
model_name: claims_model
feature_service: claims_model_v1
training_data: data/claims.parquet
request_fields:
  claim_id:
    kind: identifier
    constraints: {min_length: 1, max_length: 32, pattern: "^[a-z0-9_]+$"}
    description: Claim id, echoed in the answer.
    example: claim_1
  policy_id:
    kind: identifier
    constraints: {pattern: "^p[0-9]+$"}
    description: Insurance policy the claim is made on.
    example: p12
  claimed:
    kind: number
    constraints: {ge: 0, le: 1000000}
    description: Amount claimed.
    example: 1200.0
  channel:
    kind: category
    required: false
    constraints: {values: [web, phone, agent, other], unknown: as_other, other: other}
    description: Where the claim came in.
    example: web
entities:
  policy_id: {join_key: policy_id, route: policies, description: The insurance policy.}
request_features: [claimed]
label_column: is_fraudulent
labels: [pay, review, refuse]
threshold_rule:
  targets:
    review: {min_precision: 0.3, fallback_quantile: 0.8}
    refuse: {min_precision: 0.6, fallback_quantile: 0.95}
uncertain: {max_unknown_entities: 0, report_label_at_or_above: refuse}
reasons:
  - code: frequent_claimant
    text: Three or more claims on this policy in 90 days.
    when: policy_claims_90d >= 3
  - code: large_claim
    text: A claim above 5,000.
    when: claimed > 5000
features:
  policy_claims_90d: "{value:g} claims on this policy in 90 days"
  claimed: "claim of {value:,.0f}"
"""

FEATURE_STORE_YAML = """\
project: insurance_claims
provider: local
registry: data/registry.db
online_store: {type: sqlite, path: data/online_store.db}
offline_store: {type: duckdb}
entity_key_serialization_version: 3
"""

DEFINITIONS = '''\
"""Insurance claims: one entity, one batch view, one FeatureService."""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

DATA = Path(__file__).resolve().parent / "data"

policy = Entity(name="policy", join_keys=["policy_id"], value_type=ValueType.STRING)

policy_source = FileSource(
    name="policy_source",
    path=str(DATA / "policy_features.parquet"),
    timestamp_field="event_timestamp",
)

policy_features = FeatureView(
    name="policy_features",
    entities=[policy],
    ttl=timedelta(days=60),
    schema=[
        Field(name="policy_claims_90d", dtype=Int64),
        Field(name="policy_paid_mean_90d", dtype=Float64),
    ],
    online=True,
    source=policy_source,
)

claims_model_v1 = FeatureService(name="claims_model_v1", features=[policy_features])
'''

POLICIES = 300
CLAIMS = 4000


def write_domain(folder: Path, now: datetime) -> None:
    """The domain's files and its small synthetic data: frequent claimants and large claims
    are fraudulent more often."""
    folder.mkdir(parents=True)
    (folder / "domain.yaml").write_text(DOMAIN_YAML)
    (folder / "feature_store.yaml").write_text(FEATURE_STORE_YAML)
    (folder / "claims_definitions.py").write_text(DEFINITIONS)
    data = folder / "data"
    data.mkdir()
    rng = np.random.default_rng(21)
    claims_90d = rng.poisson(1.2, POLICIES)
    policies = pd.DataFrame(
        {
            "policy_id": [f"p{i}" for i in range(POLICIES)],
            "policy_claims_90d": claims_90d.astype("int64"),
            "policy_paid_mean_90d": rng.gamma(2.0, 800.0, POLICIES),
            "event_timestamp": pd.Timestamp(now - timedelta(days=20)),
        }
    )
    policies.to_parquet(data / "policy_features.parquet", index=False)
    which = rng.integers(0, POLICIES, CLAIMS)
    claimed = rng.lognormal(7.0, 1.0, CLAIMS).round(2)
    logit = -3.0 + 0.9 * claims_90d[which] + 0.0004 * claimed
    claims = pd.DataFrame(
        {
            "claim_id": [f"claim_{i}" for i in range(CLAIMS)],
            "policy_id": [f"p{i}" for i in which],
            "claimed": claimed,
            "channel": rng.choice(["web", "phone", "agent", "other"], CLAIMS),
            "event_timestamp": pd.Timestamp(now - timedelta(days=15))
            + pd.to_timedelta(np.sort(rng.integers(0, 14 * 86400, CLAIMS)), unit="s"),
            "is_fraudulent": (rng.random(CLAIMS) < 1 / (1 + np.exp(-logit))).astype("int64"),
        }
    )
    claims.to_parquet(data / "claims.parquet", index=False)


@pytest.fixture(scope="module")
def claims_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The domain applied, materialized, trained and served: files and settings only."""
    now = clock.now().replace(microsecond=0)
    folder = tmp_path_factory.mktemp("new_domain") / "claims"
    write_domain(folder, now)
    feast_cli(folder, "apply")
    feast_cli(
        folder,
        "materialize-incremental",
        (now + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S"),
    )
    packages = tmp_path_factory.mktemp("new_domain_packages")
    train(
        repo_path=folder,
        events_path=None,
        output_root=packages,
        num_boost_round=40,
        domain=load_domain(folder),
    )
    settings = settings_for(folder, packages, domains=(folder,))
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        yield client


CLAIM = {"claim_id": "claim_new_1", "policy_id": "p7", "claimed": 800.0, "channel": "web"}


def test_a_claim_is_scored_in_the_domains_words(claims_service: TestClient) -> None:
    response = claims_service.post("/v1/insurance-claims/score", json=CLAIM)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["claim_id"] == "claim_new_1"
    assert answer["label"] in {"pay", "review", "refuse"}
    assert answer["model_version"] == "claims_model/v1"
    assert answer["feature_freshness"]["policy_id"]["status"] == "present"
    # A channel the domain does not know is scored as `other`, as declared.
    fax = claims_service.post("/v1/insurance-claims/score", json={**CLAIM, "channel": "fax"})
    assert fax.status_code == 200


def test_an_unknown_policy_is_thin_evidence(claims_service: TestClient) -> None:
    answer = claims_service.post(
        "/v1/insurance-claims/score", json={**CLAIM, "policy_id": "p999999"}
    ).json()
    assert "unknown_policy_id" in answer["reasons"]
    assert answer["label"] in {"uncertain", "refuse"}


def test_the_policy_route_and_the_batch_route(claims_service: TestClient) -> None:
    entity = claims_service.get("/v1/policies/p7/score")
    assert entity.status_code == 200, entity.text
    assert (entity.json()["entity"], entity.json()["entity_id"]) == ("policy", "p7")
    assert claims_service.get("/v1/policies/P 7/score").status_code == 422
    batch = claims_service.post(
        "/v1/insurance-claims/score-batch",
        json={"insurance_claims": [CLAIM, {**CLAIM, "claim_id": "claim_new_2"}]},
    )
    assert batch.status_code == 200, batch.text
    assert [r["claim_id"] for r in batch.json()["results"]] == ["claim_new_1", "claim_new_2"]


def test_malformed_claims_name_the_field(claims_service: TestClient) -> None:
    response = claims_service.post("/v1/insurance-claims/score", json={**CLAIM, "claimed": -5})
    assert response.status_code == 422
    assert response.json()["message"].startswith("claimed: ")
    response = claims_service.post("/v1/insurance-claims/score", json={**CLAIM, "vin": "x"})
    assert response.json()["message"] == "vin: is not a field of this request; remove it"


def test_the_domain_documents_itself(claims_service: TestClient) -> None:
    document = claims_service.get("/openapi.json").json()
    assert {
        "/v1/insurance-claims/score",
        "/v1/insurance-claims/score-batch",
        "/v1/policies/{policy_id}/score",
        "/v1/insurance-claims/{claim_id}/explanation",
    } <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert schemas["InsuranceClaim"]["required"] == ["claim_id", "policy_id", "claimed"]
    assert schemas["InsuranceClaimScoreResponse"]["properties"]["label"]["enum"] == [
        "pay",
        "review",
        "refuse",
        "uncertain",
    ]
    assert not any(path.startswith("/v1/transactions") for path in document["paths"])
