"""Hostile input: property-based tests of the request models, and an API fuzz run.

The fuzz run drives schemathesis over the service's own OpenAPI document against a real uvicorn
server (in a thread, on a free port): valid and invalid requests for every operation, with the
right key. No answer may be a server error other than the documented 503s, and every error must
be the typed body {code, stage, message, request_id}.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import ValidationError

from feature_repo.reference import CURRENCIES
from scoring_service.api.app import create_app
from tests.conftest import free_port
from tests.fixtures.service import ADMIN_HEADERS, API_HEADERS, FRAUD_API, settings_for

Transaction = FRAUD_API.request
ScoreBatchRequest = FRAUD_API.batch_request
canonical_ip = FRAUD_API.spec.request_fields["ip_address"].parse

DOCUMENTED_503 = {"feature_store_unavailable", "model_unavailable", "overloaded", "not_ready"}
ERROR_FIELDS = {"code", "stage", "message", "request_id"}
EXAMPLES_PER_MODE = 12
MODEL_EXAMPLES = settings(max_examples=60, deadline=None)

identifier = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}", fullmatch=True)
country = st.from_regex(r"[A-Z]{2}", fullmatch=True)


@st.composite
def transactions(draw: st.DrawFn) -> dict[str, Any]:
    """Valid business requests, as JSON objects."""
    body: dict[str, Any] = {
        "transaction_id": draw(identifier),
        "amount": draw(st.floats(min_value=0, max_value=1e9, allow_nan=False)),
        "currency": draw(st.sampled_from(sorted(CURRENCIES))),
        "ip_address": str(draw(st.ip_addresses())),
        "card_id": draw(identifier),
        "merchant_id": draw(identifier),
    }
    for name in ("card_country", "ip_country", "merchant_country"):
        if draw(st.booleans()):
            body[name] = draw(country)
    return body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=12,
)


@MODEL_EXAMPLES
@given(transactions())
def test_valid_transactions_are_accepted(body: dict[str, Any]) -> None:
    transaction = Transaction.model_validate(body)
    assert transaction.ip_address == str(ipaddress.ip_address(body["ip_address"]))
    assert transaction.currency == body["currency"]
    assert math.isfinite(transaction.amount) and transaction.amount >= 0


@MODEL_EXAMPLES
@given(transactions(), st.sampled_from(list(Transaction.model_fields)), json_values)
def test_any_field_value_is_accepted_or_refused_cleanly(
    body: dict[str, Any], field: str, value: Any
) -> None:
    """Whatever lands in a field, validation either passes or raises ValidationError."""
    try:
        transaction = Transaction.model_validate({**body, field: value})
    except ValidationError as exc:
        assert exc.errors()
        return
    assert math.isfinite(transaction.amount)
    assert len(transaction.transaction_id) <= 64 and len(transaction.ip_address) <= 45


@MODEL_EXAMPLES
@given(json_values)
def test_arbitrary_json_never_breaks_validation(value: Any) -> None:
    for model in (Transaction, ScoreBatchRequest):
        with contextlib.suppress(ValidationError):
            model.model_validate(value)


@MODEL_EXAMPLES
@given(transactions(), st.sampled_from([math.nan, math.inf, -math.inf, -0.01, 1e9 + 1]))
def test_amount_must_be_finite_and_in_range(body: dict[str, Any], amount: float) -> None:
    with pytest.raises(ValidationError):
        Transaction.model_validate({**body, "amount": amount})


@MODEL_EXAMPLES
@given(
    transactions(),
    st.sampled_from(["transaction_id", "card_id", "merchant_id", "ip_address"]),
    st.integers(min_value=65, max_value=5000),
)
def test_strings_are_bounded(body: dict[str, Any], field: str, length: int) -> None:
    with pytest.raises(ValidationError):
        Transaction.model_validate({**body, field: "1" * length})


@MODEL_EXAMPLES
@given(st.text(max_size=60))
def test_canonical_ip_accepts_only_addresses(text: str) -> None:
    try:
        canonical = canonical_ip(text)
    except ValueError:
        return
    assert canonical == str(ipaddress.ip_address(text.strip()))


@MODEL_EXAMPLES
@given(st.ip_addresses())
def test_canonical_ip_is_idempotent(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    canonical = canonical_ip(str(address))
    assert canonical_ip(canonical) == canonical == str(address)


@pytest.fixture(scope="module")
def live_url(sqlite_repo: Path, model_root: Path) -> Iterator[str]:
    """The service under a real uvicorn server in a background thread."""
    app = create_app(settings_for(sqlite_repo, model_root, max_batch_size=20))
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    server.should_exit = True
    thread.join(timeout=30)


@settings(max_examples=40, deadline=None, database=None)
@given(body=transactions())
def test_valid_transactions_score_over_http(live_url: str, body: dict[str, Any]) -> None:
    """Random valid transactions (mostly unknown entities, IPv4 and IPv6) reach the model."""
    import httpx

    response = httpx.post(f"{live_url}/v1/transactions/score", json=body, headers=API_HEADERS)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["transaction_id"] == body["transaction_id"]
    assert answer["label"] in {"not_fraud", "suspicious", "highly_suspicious", "uncertain"}
    assert 0.0 <= answer["score"] <= 1.0


def check_answer(case: Any, response: Any) -> None:
    """No server error but the documented 503s; every error is the typed body."""
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == ERROR_FIELDS, where
    if response.status_code >= 500:
        assert response.status_code == 503 and body["code"] in DOCUMENTED_503, where


def fuzz_operation(url: str, operation: Any, mode: Any, headers: dict[str, str]) -> None:
    """Send EXAMPLES_PER_MODE generated requests for one operation and check each answer."""

    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        response = case.call(base_url=url, headers=headers, timeout=10)
        check_answer(case, response)

    fuzz()


def test_api_fuzz(live_url: str) -> None:
    import httpx

    document = httpx.get(f"{live_url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        headers = ADMIN_HEADERS if operation.path.startswith("/admin") else API_HEADERS
        fuzz_operation(live_url, operation, schemathesis.GenerationMode.POSITIVE, headers)
        # Unsatisfiable: nothing in this operation can be made invalid (e.g. no parameters).
        with contextlib.suppress(Unsatisfiable):
            fuzz_operation(live_url, operation, schemathesis.GenerationMode.NEGATIVE, headers)
