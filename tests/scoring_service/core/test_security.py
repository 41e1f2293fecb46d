"""Authentication: every route needs a key of its scope, except an explicit list of open ones.

The coverage test walks ``app.routes``, so a route added later without a key check fails it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scoring_service.api.app import create_app
from scoring_service.core.errors import ConfigurationInvalid, Forbidden
from scoring_service.core.security import KeyRing, KeyScope, check_key, hash_key
from tests.fixtures.service import (
    ADMIN_HEADERS,
    ANALYST_HEADERS,
    API_HEADERS,
    API_KEY,
    settings_for,
)

# Routes anyone may call: liveness, readiness, Prometheus metrics (counts and latencies, no
# secrets) and the API's own documentation.
OPEN_ROUTES = {
    "/health/live",
    "/health/ready",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
PATH_VALUES = {
    "ip_address": "203.0.113.7",
    "card_id": "card_0000001",
    "merchant_id": "m_00001",
    "transaction_id": "tx_never_scored",
}
BODIES = {
    "/admin/models/reload": {"name": "fraud_model", "version": "v1"},
    "/v1/transactions/score-batch": {"transactions": []},
}


@pytest.fixture(scope="module")
def app_client(sqlite_repo: Path, model_root: Path) -> Iterator[TestClient]:
    """An app with its lifespan running and no default key."""
    with TestClient(create_app(settings_for(sqlite_repo, model_root))) as client:
        yield client


def all_routes(client: TestClient) -> list[tuple[str, set[str]]]:
    """(path, methods) of every route the app serves, included routers flattened."""
    app: Any = client.app
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI versions whose app.routes are already flat
        routes: Iterable[Any] = app.routes
    else:
        routes = iter_route_contexts(app.routes)
    out = []
    for route in routes:
        assert route.path, f"a route without a path: {route!r}"
        out.append((route.path, set(route.methods or ())))
    return out


def protected_calls(client: TestClient) -> list[tuple[str, str, str]]:
    """(method, concrete path, path template) for every route not in OPEN_ROUTES."""
    calls = []
    for template, methods in all_routes(client):
        if template in OPEN_ROUTES:
            continue
        path = re.sub(r"{(\w+)(:\w+)?}", lambda m: PATH_VALUES.get(m.group(1), "x"), template)
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            calls.append((method, path, template))
    return calls


def required_scope(template: str) -> KeyScope:
    """Admin routes need the admin scope, explanations the analyst one, everything else the
    scoring one."""
    if template.startswith("/admin"):
        return KeyScope.ADMIN
    return KeyScope.ANALYST if template.endswith("/explanation") else KeyScope.SCORE


HEADERS = {
    KeyScope.SCORE: API_HEADERS,
    KeyScope.ANALYST: ANALYST_HEADERS,
    KeyScope.ADMIN: ADMIN_HEADERS,
}


def call(client: TestClient, method: str, path: str, headers: dict[str, str]):
    body = BODIES.get(path)
    return client.request(method, path, headers=headers, json=body)


def test_every_route_needs_a_key_of_its_scope(app_client: TestClient) -> None:
    calls = protected_calls(app_client)
    templates = {template for _, _, template in calls}
    assert {
        "/v1/transactions/score",
        "/v1/transactions/{transaction_id}/explanation",
        "/admin/config",
        "/admin/models/reload",
    } <= templates
    for method, path, template in calls:
        where = f"{method} {template}"
        missing = call(app_client, method, path, {})
        assert missing.status_code == 401, f"{where} answered {missing.status_code} without a key"
        assert missing.json()["code"] == "unauthorized"
        wrong = call(app_client, method, path, {"X-API-Key": "not-a-key"})
        assert wrong.status_code == 401, f"{where} took an unknown key"
        scope = required_scope(template)
        for other in set(KeyScope) - {scope}:
            forbidden = call(app_client, method, path, HEADERS[other])
            assert forbidden.status_code == 403, f"{where} took a key of scope {other}"
            assert forbidden.json()["code"] == "forbidden"
        allowed = call(app_client, method, path, HEADERS[scope])
        assert allowed.status_code not in (401, 403), f"{where} refused its own scope"


def test_open_routes_need_no_key(app_client: TestClient) -> None:
    paths = {path for path, _ in all_routes(app_client)}
    assert {"/health/live", "/health/ready", "/metrics"} <= paths
    for path in OPEN_ROUTES & paths:
        assert app_client.get(path).status_code == 200, path


def test_refusal_is_typed_and_never_echoes_the_key(
    app_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk_live_do_not_log_me_0123456789"
    with caplog.at_level(logging.DEBUG):
        response = app_client.get("/v1/cards/card_0000001/score", headers={"X-API-Key": secret})
    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"code", "stage", "message", "request_id"}
    assert body["stage"] == "auth"
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["www-authenticate"] == "X-API-Key"
    assert secret not in response.text
    assert secret not in caplog.text


def test_oversized_key_is_refused(app_client: TestClient) -> None:
    response = app_client.get("/admin/config", headers={"X-API-Key": "k" * 5000})
    assert response.status_code == 401


def test_admin_config_reveals_no_secret(app_client: TestClient) -> None:
    response = app_client.get("/admin/config", headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["model_version"] == "fraud_model/v1"
    assert body["model"]["feature_service"] == "fraud_model_v1"
    assert body["settings"]["deadline_ms"] == 5_000
    assert body["api_keys"] == {"score": 1, "analyst": 1, "admin": 1}
    assert "api_key_hashes" not in body["settings"]
    assert "admin_key_hashes" not in body["settings"]
    assert "analyst_key_hashes" not in body["settings"]
    assert hash_key(API_KEY) not in response.text


def test_keyring_scopes() -> None:
    ring = KeyRing(
        {KeyScope.SCORE: (hash_key("a"), hash_key("b")), KeyScope.ADMIN: (hash_key("b"),)}
    )
    assert ring.scopes_of("a") == {KeyScope.SCORE}
    assert ring.scopes_of("b") == {KeyScope.SCORE, KeyScope.ADMIN}
    assert ring.scopes_of("c") == set()


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (KeyScope.SCORE, "This key may not call scoring routes; use a scoring key."),
        (KeyScope.ANALYST, "This key may not call explanation routes; use an analyst key."),
        (KeyScope.ADMIN, "This key may not call admin routes; use an admin key."),
    ],
)
def test_a_key_of_another_scope_is_told_which_key_to_use(scope: KeyScope, message: str) -> None:
    others = tuple(hash_key(s.value) for s in KeyScope if s != scope)
    ring = KeyRing({other: others for other in KeyScope if other != scope})
    presented = next(s.value for s in KeyScope if s != scope)
    with pytest.raises(Forbidden) as refused:
        check_key(ring, presented, scope)
    assert refused.value.message == message


def test_service_does_not_start_without_keys(sqlite_repo: Path, model_root: Path) -> None:
    settings = settings_for(sqlite_repo, model_root, api_key_hashes=())
    with (
        pytest.raises(ConfigurationInvalid, match="SCORING_API_KEY_HASHES"),
        TestClient(create_app(settings)),
    ):
        pytest.fail("the service started without keys")
