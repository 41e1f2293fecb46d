"""Every 422 case: the caller learns which field is wrong and why, in business terms."""

from __future__ import annotations

import json

import pytest

CASES = [
    ("malformed_ip", {"ip_address": "300.1.2.3"}, "ip_address", "not a valid IPv4 or IPv6"),
    ("ip_not_text", {"ip_address": 12345}, "ip_address", "IPv4 or IPv6"),
    ("negative_amount", {"amount": -1.5}, "amount", "greater than or equal to 0"),
    ("amount_not_number", {"amount": "ten"}, "amount", "valid number"),
    ("unknown_currency", {"currency": "XYZ"}, "currency", "not a supported ISO 4217"),
    ("bad_card_id", {"card_id": "card 1; DROP"}, "card_id", "pattern"),
    ("extra_field", {"cvv": "123"}, "cvv", "not a field of this request"),
    ("bad_country", {"ip_country": "usa"}, "ip_country", "at most 2 characters"),
]


@pytest.mark.parametrize(("case", "change", "field", "text"), CASES, ids=[c[0] for c in CASES])
def test_invalid_field(client, valid_body, case, change, field, text) -> None:
    response = client.post("/v1/transactions/score", json={**valid_body, **change})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "invalid_request"
    assert body["stage"] == "request"
    assert body["message"].startswith(f"{field}: ")
    assert text in body["message"]
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "field", ["transaction_id", "amount", "currency", "ip_address", "card_id", "merchant_id"]
)
def test_missing_field(client, valid_body, field) -> None:
    body = {k: v for k, v in valid_body.items() if k != field}
    response = client.post("/v1/transactions/score", json=body)
    assert response.status_code == 422
    assert response.json()["message"] == f"{field}: is required"


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_amount(client, valid_body, raw) -> None:
    text = json.dumps({**valid_body, "amount": 0}).replace('"amount": 0', f'"amount": {raw}')
    response = client.post(
        "/v1/transactions/score", content=text, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith("amount: ")


def test_body_not_json(client) -> None:
    response = client.post(
        "/v1/transactions/score", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["message"].startswith("body: is not valid JSON")


def test_malformed_ip_in_path(client) -> None:
    response = client.get("/v1/ip-addresses/not-an-ip/score")
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    assert "not a valid IPv4 or IPv6 address" in response.json()["message"]


def test_empty_batch(client) -> None:
    response = client.post("/v1/transactions/score-batch", json={"transactions": []})
    assert response.status_code == 422
    assert response.json()["message"].startswith("transactions: ")


def test_batch_error_names_the_item(client, valid_body) -> None:
    body = {"transactions": [valid_body, {**valid_body, "amount": -3}]}
    response = client.post("/v1/transactions/score-batch", json=body)
    assert response.status_code == 422
    assert response.json()["message"].startswith("transactions.1.amount: ")


def test_every_refusal_has_one_envelope() -> None:
    """Handlers and the body-limit middleware build the same body, counted by code and stage."""
    from scoring_service.core import metrics
    from scoring_service.core.errors import PayloadTooLarge, error_response, response_for
    from scoring_service.core.logs import request_id_var

    counter = metrics.ERRORS.labels("payload_too_large", "request")
    before = counter._value.get()
    token = request_id_var.set("req-123")
    try:
        direct = error_response(413, "payload_too_large", "request", "too big", {"X-A": "1"})
        from_error = response_for(PayloadTooLarge("too big", headers={"X-A": "1"}))
    finally:
        request_id_var.reset(token)
    for response in (direct, from_error):
        assert response.status_code == 413
        assert response.headers["x-a"] == "1"
        assert json.loads(response.body) == {
            "code": "payload_too_large",
            "stage": "request",
            "message": "too big",
            "request_id": "req-123",
        }
    assert counter._value.get() == before + 2
