"""Request and answer models built from domain files: the declaration decides, not the code.

Each request model must accept exactly what the domain's ``RequestField.parse`` accepts, turn a
value into what parse returns (canonical IP text, upper-case currency, a category's unknown
treatment), and refuse the rest with a message naming the field.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from feature_repo import clock
from feature_repo.domain import DomainSpec, load_domain
from scoring_service.api.domain_api import DomainApi
from scoring_service.core.errors import InvalidRequest, validation_message
from tests.conftest import ROOT
from tests.feature_repo.test_domain import minimal

pytestmark = pytest.mark.clock

FRAUD = DomainApi.build(load_domain(ROOT / "feature_repo" / "fraud"))
CREDIT = DomainApi.build(load_domain(ROOT / "feature_repo" / "credit"))

FRAUD_BODY: dict[str, Any] = {
    "transaction_id": "tx_1",
    "amount": 12.5,
    "currency": "USD",
    "ip_address": "203.0.113.7",
    "card_id": "card_1",
    "merchant_id": "m_1",
}
CREDIT_BODY: dict[str, Any] = {
    "loan_id": "10000",
    "dob_ssn": "19530219_5179",
    "zipcode": "76104",
    "person_age": 22,
    "person_income": 59000,
    "person_home_ownership": "RENT",
    "loan_intent": "PERSONAL",
    "loan_amnt": 35000,
    "loan_int_rate": 16.02,
}


def refusal(api: DomainApi, body: dict[str, Any]) -> str:
    """The 422 message a body gets (it must be refused)."""
    with pytest.raises(ValidationError) as caught:
        api.request.model_validate_json(json.dumps(body))
    return validation_message(caught.value.errors())


# Values per field of both shipped domains: each is sent in an otherwise valid body; the model
# must agree with the declaration's own parse, value for value.
SAMPLES: dict[str, list[Any]] = {
    "ip_address": ["203.0.113.7", " 2001:DB8::0:1 ", "300.1.2.3", "::ffff:1.2.3.4", 12, ""],
    "currency": ["usd", " EUR ", "XYZ", 3],
    "card_country": ["US", "us", "USA", None, 1],
    "amount": [0, 1e9, -0.01, 1e10, "ten"],
    "card_id": ["card_1", "card 1", "", "x" * 65],
    "timestamp": [None, "2099-01-01T00:00:00Z", "2024-01-01T00:00:00"],
    "person_age": [18, 100, 17, 22.5, "22"],
    "person_home_ownership": ["OWN", "CASTLE", 7],
    "loan_intent": ["MEDICAL", "SPACE TRAVEL"],
    "person_emp_length": [None, 0, 101],
    "zipcode": ["76104", "7610", "761045"],
    "loan_amnt": [1, 0, -5],
}


@pytest.mark.parametrize(
    ("api", "body", "field"),
    [
        (api, body, field)
        for api, body in ((FRAUD, FRAUD_BODY), (CREDIT, CREDIT_BODY))
        for field in SAMPLES
        if field in api.spec.request_fields
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_the_model_agrees_with_the_declaration(api: DomainApi, body: dict, field: str) -> None:
    spec = api.spec.request_fields[field]
    now = clock.now()
    for value in SAMPLES[field]:
        try:
            expected = spec.parse(value, now=now)
        except ValueError:
            message = refusal(api, {**body, field: value})
            assert message.startswith(f"{field}: "), (value, message)
            continue
        parsed = api.request.model_validate_json(json.dumps({**body, field: value}))
        assert getattr(parsed, field) == expected, value


def test_refusals_keep_typed_messages_and_name_the_field() -> None:
    assert refusal(FRAUD, {**FRAUD_BODY, "amount": -1}) == (
        "amount: Input should be greater than or equal to 0"
    )
    assert refusal(FRAUD, {**FRAUD_BODY, "ip_country": "usa"}) == (
        "ip_country: String should have at most 2 characters"
    )
    assert refusal(FRAUD, {**FRAUD_BODY, "cvv": "123"}) == (
        "cvv: is not a field of this request; remove it"
    )
    body = {k: v for k, v in CREDIT_BODY.items() if k != "zipcode"}
    assert refusal(CREDIT, body) == "zipcode: is required"
    assert "timestamp: must be within 86400 seconds of now" in refusal(
        FRAUD, {**FRAUD_BODY, "timestamp": (clock.now() + timedelta(days=2)).isoformat()}
    )
    batch = {"loan_applications": [CREDIT_BODY, {**CREDIT_BODY, "person_age": 12}]}
    with pytest.raises(ValidationError) as caught:
        CREDIT.batch_request.model_validate_json(json.dumps(batch))
    assert validation_message(caught.value.errors()).startswith("loan_applications.1.person_age: ")


def test_categories_follow_their_declared_unknown_treatment() -> None:
    parsed = CREDIT.request.model_validate(
        {**CREDIT_BODY, "person_home_ownership": "CASTLE", "loan_intent": "SPACE TRAVEL"}
    )
    assert parsed.person_home_ownership == "OTHER"  # as_other
    assert parsed.loan_intent is None  # as_missing
    spec = DomainSpec.model_validate(minimal())
    spec.request_fields["channel"].constraints.unknown = None
    spec.request_fields["channel"].constraints.other = None
    api = DomainApi.build(spec)
    body = {"claim_id": "c1", "policy_id": "p1", "claimed": 10.0}
    assert api.request.model_validate({**body, "channel": "web"}).channel == "web"
    with pytest.raises(ValidationError, match="is not one of"):
        api.request.model_validate({**body, "channel": "fax"})
    schema = api.request.model_json_schema()["properties"]["channel"]
    assert schema["anyOf"][0] == {"type": "string", "enum": ["web", "phone", "other"]}


def test_answers_echo_the_business_id_and_speak_the_domains_labels() -> None:
    for api in (FRAUD, CREDIT):
        schema = api.response.model_json_schema()
        assert next(iter(schema["properties"])) == api.business_id
        labels = schema["properties"]["label"]["enum"]
        assert labels == [*api.spec.labels, api.spec.uncertain_label]
        for model in (api.result, api.batch_response, api.entity_response, api.explanation):
            assert model.__name__.startswith(api.spec.schema_name)
    assert CREDIT.response.__name__ == "LoanApplicationScoreResponse"
    assert "variant" in FRAUD.result.model_fields
    with pytest.raises(ValidationError):
        CREDIT.result.model_validate(
            {
                "loan_id": "1",
                "score": 0.1,
                "label": "not_fraud",  # another domain's vocabulary
                "reasons": [],
                "model_version": "credit_model/v1",
                "variant": "champion",
                "feature_freshness": {},
            }
        )


def test_entity_routes_come_from_the_entities_that_declare_one() -> None:
    assert [(r.path, r.name, r.entity_name) for r in FRAUD.entity_routes] == [
        ("/v1/ip-addresses/{ip_address}/score", "score_ip_address", "ip_address"),
        ("/v1/cards/{card_id}/score", "score_card", "card"),
        ("/v1/merchants/{merchant_id}/score", "score_merchant", "merchant"),
    ]
    assert CREDIT.entity_routes == ()  # neither the applicant nor the ZIP code is a route
    ip, card, _ = FRAUD.entity_routes
    assert ip.parse(" 2001:DB8::1 ") == "2001:db8::1"
    with pytest.raises(InvalidRequest, match="ip_address: 'not-an-ip' is not a valid IPv4"):
        ip.parse("not-an-ip")
    with pytest.raises(InvalidRequest, match="card_id: String should match pattern"):
        card.parse("card 1")
    assert (FRAUD.score_path, FRAUD.batch_path, FRAUD.explanation_path) == (
        "/v1/transactions/score",
        "/v1/transactions/score-batch",
        "/v1/transactions/{transaction_id}/explanation",
    )
    assert CREDIT.collection == "loan_applications" and CREDIT.score_route == (
        "score_loan_application"
    )


def test_a_batch_parses_each_value_as_the_declaration_does_however_often_it_repeats() -> None:
    """Values the request fields remember (IP addresses, currencies, countries, categories)
    come out as the declaration parses them, in every object of a batch; a refused value is
    refused each time with the same message, naming its object."""
    values = {
        "ip_address": [" 2001:DB8::0:1 ", "203.0.113.7", "::ffff:1.2.3.4"],
        "currency": ["usd", " EUR ", "USD"],
        "card_country": ["US", None, "FR"],
    }
    objects = [
        {**FRAUD_BODY, **{field: options[i % 3] for field, options in values.items()}}
        for i in range(30)
    ]
    for _ in range(2):
        batch = FRAUD.batch_request.model_validate_json(json.dumps({"transactions": objects}))
        for parsed, body in zip(batch.transactions, objects, strict=True):
            for field in values:
                expected = FRAUD.spec.request_fields[field].parse(body[field])
                assert getattr(parsed, field) == expected
    for i in (0, 7):
        bad = [*objects[:i], {**FRAUD_BODY, "currency": "XYZ"}, *objects[i:]]
        with pytest.raises(ValidationError) as caught:
            FRAUD.batch_request.model_validate_json(json.dumps({"transactions": bad}))
        assert validation_message(caught.value.errors()) == (
            f"transactions.{i}.currency: 'XYZ' is not a supported ISO 4217 "
            "currency code (e.g. USD, EUR)"
        )
