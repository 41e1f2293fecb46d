"""End to end through HTTP, with the lifespan running, on SQLite and on a real Redis."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.fixtures.service import as_request

pytestmark = pytest.mark.clock

LABELS = {"not_fraud", "suspicious", "highly_suspicious", "uncertain"}


def test_health(client) -> None:
    assert client.get("/health/live").json()["status"] == "alive"
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"model": "loaded", "feature_store": "reachable"}
    assert body["model_version"] == "fraud_model/v1"
    assert body["device"] == "cpu"


def test_score_known_transaction(client, valid_body) -> None:
    response = client.post("/v1/transactions/score", json=valid_body)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transaction_id"] == valid_body["transaction_id"]
    assert 0.0 <= body["score"] <= 1.0
    assert body["label"] in LABELS - {"uncertain"}
    assert body["model_version"] == "fraud_model/v1"
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["feature_freshness"]["card_id"]["status"] == "present"
    assert body["feature_freshness"]["merchant_id"]["status"] == "present"


def test_caller_request_id_is_kept(client, valid_body) -> None:
    response = client.post(
        "/v1/transactions/score", json=valid_body, headers={"X-Request-ID": "abc-123"}
    )
    assert response.json()["request_id"] == "abc-123"


def test_same_answer_on_both_paths(client, recent) -> None:
    """The single and the batch call give the same score for the same transaction."""
    bodies = [as_request(row) for _, row in recent.tail(20).iterrows()]
    batch = client.post("/v1/transactions/score-batch", json={"transactions": bodies})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["transaction_id"] for r in results] == [b["transaction_id"] for b in bodies]
    for body, result in zip(bodies[:5], results[:5], strict=True):
        single = client.post("/v1/transactions/score", json=body).json()
        assert single["score"] == pytest.approx(result["score"], abs=1e-7)
        assert single["label"] == result["label"]


def test_fraud_scores_higher_than_legit(client, transactions) -> None:
    """Direction: recent known fraud gets a higher mean score than recent legit traffic."""
    tail = transactions[
        transactions.event_timestamp > transactions.event_timestamp.max() - pd.Timedelta(days=7)
    ]
    # Reported fraud that is fraud, against legitimate payments: the generated labels are noisy
    # (legitimate purchases charged back as friendly fraud, fraud never reported), and no model
    # can tell a friendly-fraud row from the legitimate payment it is.
    fraud = tail[(tail.is_fraud == 1) & ~tail.fraud_pattern.isin(["none", "friendly_fraud"])]
    fraud = fraud.tail(40)
    legit = tail[tail.fraud_pattern == "none"].tail(50)

    def scores(frame):
        body = {"transactions": [as_request(r) for _, r in frame.iterrows()]}
        response = client.post("/v1/transactions/score-batch", json=body)
        assert response.status_code == 200, response.text
        return [r["score"] for r in response.json()["results"]]

    assert len(fraud) >= 10
    # Higher as a ranking (the probability that a fraud outscores a legit payment, ties half),
    # not as a ratio of means: a small model's scores are compressed near the base rate, by an
    # amount that depends on where the generated history ends.
    fraud_scores, legit_scores = scores(fraud), scores(legit)
    wins = sum((f > g) + 0.5 * (f == g) for f in fraud_scores for g in legit_scores)
    assert wins / (len(fraud_scores) * len(legit_scores)) > 0.85
    assert sum(fraud_scores) / len(fraud_scores) > sum(legit_scores) / len(legit_scores)


def test_unknown_entities_are_uncertain(client, valid_body) -> None:
    body = {
        **valid_body,
        "transaction_id": "tx_unknown",
        "ip_address": "192.0.2.250",
        "card_id": "card_never_seen",
        "merchant_id": "m_never_seen",
    }
    result = client.post("/v1/transactions/score", json=body).json()
    statuses = {k: v["status"] for k, v in result["feature_freshness"].items()}
    assert statuses == {"ip_address": "missing", "card_id": "missing", "merchant_id": "missing"}
    assert {"unknown_ip_address", "unknown_card_id", "unknown_merchant_id"} <= set(
        result["reasons"]
    )
    if result["label"] != "highly_suspicious":
        assert result["label"] == "uncertain"
        assert result["reasons"][0] == "insufficient_evidence"


def test_batch_limit(client, valid_body) -> None:
    body = {"transactions": [{**valid_body, "transaction_id": f"t{i}"} for i in range(51)]}
    response = client.post("/v1/transactions/score-batch", json=body)
    assert response.status_code == 413
    assert response.json()["code"] == "batch_too_large"
    assert "at most 50" in response.json()["message"]


def test_entity_calls(client, recent) -> None:
    row = recent.iloc[-1]
    ip = client.get(f"/v1/ip-addresses/{row.ip_address}/score")
    assert ip.status_code == 200, ip.text
    body = ip.json()
    assert body["entity"] == "ip_address" and body["entity_id"] == row.ip_address
    assert body["feature_freshness"]["ip_address"]["status"] == "present"
    assert body["feature_freshness"]["card_id"]["status"] == "not_requested"
    assert client.get(f"/v1/cards/{row.card_id}/score").status_code == 200
    assert client.get(f"/v1/merchants/{row.merchant_id}/score").status_code == 200


def test_entity_call_canonicalizes_ipv6(client) -> None:
    response = client.get("/v1/ip-addresses/2001:DB8:0:0::1/score")
    assert response.status_code == 200
    assert response.json()["entity_id"] == "2001:db8::1"


def test_docs_and_openapi(client) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/transactions/score",
        "/v1/transactions/score-batch",
        "/v1/ip-addresses/{ip_address}/score",
    } <= set(paths)


def test_metrics(client, valid_body) -> None:
    client.post("/v1/transactions/score", json=valid_body)
    text = client.get("/metrics").text
    assert 'scoring_stage_seconds_count{model_version="fraud_model/v1",stage="features"}' in text
    assert "scoring_labels_total" in text


def test_unknown_route_is_typed(client) -> None:
    response = client.get("/v1/nope")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert set(response.json()) == {"code", "stage", "message", "request_id"}
