"""The pure-ASGI score endpoints: the order of work (key, admission before the body, deadline
from arrival, body validation, the scoring callable, orjson out), their refusals in the one
envelope, and the score routes answered ahead of FastAPI's own layers.

Requests go straight through the ASGI callables with hand-made scopes where the order of work
is the point (was the body read? when did the call arrive?), and through the app otherwise; the
app runs on the session's SQLite store and model package, lifespan running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import StringConstraints
from starlette.routing import Route

from feature_repo.domain import load_domain
from scoring_service.api.app import create_app
from scoring_service.api.domain_api import DomainApi, path_value
from scoring_service.api.endpoints import (
    ScoreCall,
    ScoreEndpoint,
    _FastRoutes,
    json_body,
    path_parameter,
    read_body,
)
from scoring_service.core.errors import UNEXPECTED_MESSAGE, InvalidRequest
from scoring_service.core.security import ARRIVED_AT
from scoring_service.scoring.resilience import Deadline
from tests.conftest import ROOT
from tests.fixtures.service import API_HEADERS, API_KEY, FRAUD_API, settings_for

SCORE = "/v1/transactions/score"
FRAUD = DomainApi.build(load_domain(ROOT / "feature_repo" / "fraud"))
CREDIT = DomainApi.build(load_domain(ROOT / "feature_repo" / "credit"))


@pytest.fixture(scope="module")
def http(sqlite_repo: Path, model_root: Path) -> Iterator[TestClient]:
    """A client of the app on SQLite, lifespan running while this module's tests run."""
    with TestClient(create_app(settings_for(sqlite_repo, model_root)), headers=API_HEADERS) as c:
        yield c


@pytest.fixture(scope="module")
def app(http: TestClient) -> FastAPI:
    """That app, for requests sent straight to its ASGI callables."""
    return http.app  # type: ignore[return-value]


def _scope(path: str, key: str = API_KEY, method: str = "POST") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"x-api-key", key.encode()), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


def _call(app: Any, scope: dict[str, Any], body: bytes | None) -> tuple[int, dict[str, Any]]:
    """One request straight through an ASGI app; ``body=None`` fails the test if it is read."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        assert body is not None, "the body was read"
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(payload)


def test_overload_is_refused_before_the_body_is_read(sqlite_repo: Path, model_root: Path) -> None:
    app = create_app(settings_for(sqlite_repo, model_root, max_in_flight=1))
    with TestClient(app):
        guard = app.state.guard
        assert guard.admit()  # the only slot is taken
        try:
            status, answer = _call(app, _scope(SCORE), body=None)
        finally:
            guard.release()
        assert status == 503
        assert (answer["code"], answer["stage"]) == ("overloaded", "service")
        assert guard.in_flight == 0
        # The key is checked first: an unknown caller learns nothing about the load.
        assert guard.admit()
        try:
            status, answer = _call(app, _scope(SCORE, key="not-a-key"), body=None)
        finally:
            guard.release()
        assert (status, answer["code"]) == (401, "unauthorized")


def test_deadline_counts_from_arrival(
    sqlite_repo: Path, model_root: Path, valid_body: dict
) -> None:
    """A call that waited past its deadline before it was handled is not scored at all."""
    app = create_app(settings_for(sqlite_repo, model_root, deadline_ms=100))
    with TestClient(app):
        endpoint = next(r for r in app.routes if isinstance(r, Route) and r.path == SCORE).app
        scorer = app.state.primary.scorer
        rows_before = scorer.batcher.rows
        scope = {**_scope(SCORE), "app": app, "path_params": {}}
        scope[ARRIVED_AT] = time.monotonic() - 0.2
        status, answer = _call(endpoint, scope, json.dumps(valid_body).encode())
        assert (status, answer["code"]) == (503, "feature_store_unavailable")
        assert scorer.batcher.rows == rows_before
        assert app.state.guard.in_flight == 0
        scope[ARRIVED_AT] = time.monotonic()
        status, answer = _call(endpoint, scope, json.dumps(valid_body).encode())
        assert status == 200, answer


@pytest.mark.parametrize("api", [FRAUD, CREDIT], ids=["fraud", "credit"])
def test_a_batch_past_the_schemas_bound_is_batch_too_large(api: DomainApi) -> None:
    """Past the batch schema's own bound (SCORING_MAX_BATCH_SIZE's highest value) the refusal
    is 413 batch_too_large, as under the configured limit, not a malformed request."""
    from scoring_service.api.domain_api import MAX_BATCH_ITEMS
    from scoring_service.api.endpoints import json_body
    from scoring_service.core.errors import BatchTooLarge

    parse = json_body(api.batch_request, batch=True)
    body = json.dumps({api.collection: [{}] * (MAX_BATCH_ITEMS + 1)}).encode()
    with pytest.raises(BatchTooLarge, match=f"at most {MAX_BATCH_ITEMS} {api.collection}"):
        parse({}, body)
    with pytest.raises(InvalidRequest):  # within the bound, a bad object is still a 422
        parse({}, json.dumps({api.collection: [{}]}).encode())


def exchange(
    app: Any, scope: dict[str, Any], messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The messages an ASGI app sends for a request whose body arrives as ``messages``."""
    sent: list[dict[str, Any]] = []
    incoming = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def endpoint(app: FastAPI, handler: Any) -> ScoreEndpoint[Any]:
    """A score endpoint of the app over the payment request model and ``handler``."""
    return ScoreEndpoint(
        app, "endpoint_test", json_body(FRAUD_API.request), handler, reads_body=True
    )


def test_json_body_refuses_naming_the_field(valid_body: dict) -> None:
    parse = json_body(FRAUD_API.request)
    parsed = parse({}, json.dumps(valid_body).encode())
    assert parsed.transaction_id == valid_body["transaction_id"]
    without = {k: v for k, v in valid_body.items() if k != "amount"}
    with pytest.raises(InvalidRequest) as refused:
        parse({}, json.dumps(without).encode())
    assert refused.value.message == "amount: is required"
    assert (refused.value.status_code, refused.value.code) == (422, "invalid_request")
    with pytest.raises(InvalidRequest, match=r"^body: is not valid JSON$"):
        parse({}, b"{not json")


def test_path_values_are_checked_and_named_after_their_parameter() -> None:
    card = path_value("card_id", Annotated[str, StringConstraints(pattern=r"^card_\d+$")])
    parse = path_parameter("card_id", card)
    assert parse({"path_params": {"card_id": "card_7"}}, b"") == "card_7"
    with pytest.raises(InvalidRequest) as refused:
        parse({"path_params": {"card_id": "card 7"}}, b"")
    assert refused.value.message.startswith("card_id: String should match pattern")


def test_a_deadline_header_may_shorten_the_budget_never_lengthen_it(app: FastAPI) -> None:
    route = next(r for r in app.routes if isinstance(r, Route) and r.path == SCORE)
    score: ScoreEndpoint[Any] = route.app  # type: ignore[assignment]
    assert score.budget_ms == 5_000  # the test settings' deadline
    assert score._deadline(100.0, None) == Deadline(expires_at=105.0, budget_ms=5_000)
    assert score._deadline(100.0, b"20") == Deadline(expires_at=100.02, budget_ms=20)
    assert score._deadline(100.0, b"600000").budget_ms == 5_000
    for bad, words in ((b"0", "greater than or equal to 1"), (b"soon", "valid integer")):
        with pytest.raises(InvalidRequest) as refused:
            score._deadline(100.0, bad)
        assert refused.value.message.startswith("X-Deadline-Ms: ")
        assert words in refused.value.message


def test_a_bad_deadline_header_is_refused_over_http(http: TestClient, valid_body: dict) -> None:
    response = http.post(SCORE, json=valid_body, headers={"X-Deadline-Ms": "-5"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    assert response.json()["message"].startswith("X-Deadline-Ms: ")


def test_a_body_in_several_messages_is_read_whole() -> None:
    chunks = [b'{"a": ', b"1, ", b'"b": 2}']
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    incoming = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(incoming)

    assert asyncio.run(read_body(receive)) == b'{"a": 1, "b": 2}'


def test_a_client_gone_before_its_body_gets_no_answer(app: FastAPI) -> None:
    called: list[Any] = []

    async def handler(call: ScoreCall[Any]) -> dict[str, Any]:
        called.append(call)
        return {}

    sent = exchange(
        endpoint(app, handler),
        {**_scope(SCORE), "app": app},
        [
            {"type": "http.request", "body": b'{"transaction', "more_body": True},
            {"type": "http.disconnect"},
        ],
    )
    assert sent == [] and called == []
    assert app.state.guard.in_flight == 0


def test_a_handler_answer_leaves_as_json_bytes(app: FastAPI, valid_body: dict) -> None:
    """A dict is serialized; bytes already JSON leave as they are."""

    async def as_dict(call: ScoreCall[Any]) -> dict[str, Any]:
        assert call.holds_slot and call.deadline.budget_ms == 5_000
        return {"id": call.value.transaction_id, "n": 1.5}

    async def as_bytes(call: ScoreCall[Any]) -> bytes:
        return b'{"ready":true}'

    body = json.dumps(valid_body).encode()
    answers = [
        (as_dict, {"id": valid_body["transaction_id"], "n": 1.5}),
        (as_bytes, {"ready": True}),
    ]
    for handler, expected in answers:
        start, payload = exchange(
            endpoint(app, handler),
            {**_scope(SCORE), "app": app},
            [{"type": "http.request", "body": body, "more_body": False}],
        )
        assert start["status"] == 200
        headers = dict(start["headers"])
        assert headers[b"content-type"] == b"application/json"
        assert int(headers[b"content-length"]) == len(payload["body"])
        assert json.loads(payload["body"]) == expected


def test_an_unexpected_error_is_a_generic_500_logged_not_shown(
    app: FastAPI, valid_body: dict, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(call: ScoreCall[Any]) -> dict[str, Any]:
        raise RuntimeError("secret internal detail")

    with caplog.at_level(logging.ERROR, logger="scoring_service.api.endpoints"):
        status, answer = _call(
            endpoint(app, broken), {**_scope(SCORE), "app": app}, json.dumps(valid_body).encode()
        )
    assert status == 500
    assert answer == {
        "code": "internal_error",
        "stage": "service",
        "message": UNEXPECTED_MESSAGE,
        "request_id": "-",  # no request id middleware around this bare endpoint
    }
    assert "secret internal detail" in caplog.text  # logged with its traceback
    assert app.state.guard.in_flight == 0


def test_score_routes_are_answered_ahead_of_fastapi(
    app: FastAPI, http: TestClient, valid_body: dict
) -> None:
    """POST score paths and templated entity paths go to their endpoint; another method on a
    score path, or any other path, goes through the whole FastAPI app."""
    fast = _FastRoutes(app)
    assert fast.match({**_scope(SCORE)}) is not None
    assert fast.match({**_scope("/v1/transactions/score-batch")}) is not None
    entity = {**_scope("/v1/cards/card_0000001/score", method="GET")}
    assert fast.match(entity) is not None
    assert entity["path_params"] == {"card_id": "card_0000001"}
    assert fast.match({**_scope(SCORE, method="GET")}) is None
    assert fast.match({**_scope("/health/live", method="GET")}) is None
    wrong_method = http.get(SCORE)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"
    answered = http.post(SCORE, json=valid_body)
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-request-id"] == answered.json()["request_id"]


def test_the_key_is_checked_before_anything_else(app: FastAPI) -> None:
    """No key: 401, before admission and before the body is read."""
    scope = {**_scope(SCORE), "app": app, "headers": [(b"content-type", b"application/json")]}
    status, answer = _call(endpoint(app, None), scope, body=None)
    assert (status, answer["code"], answer["stage"]) == (401, "unauthorized", "auth")
    status, answer = _call(endpoint(app, None), {**_scope(SCORE, key=API_KEY + "x")}, None)
    assert (status, answer["code"]) == (401, "unauthorized")
