"""The OpenAPI document states what the server enforces: a client generated from it is never
refused for the shape of its requests.

schemathesis generates schema-valid requests (positive data only) for every operation of the
service's own ``/openapi.json`` and sends them, with the key each route needs, to the app with
its lifespan running on the session's SQLite store and model: once serving the single model,
once serving a deployment (champion and challenger by sticky weights, a shadow). Every answer
must be one the document promises: a documented status code, a body of the documented schema,
never a refusal of the request's shape (400, 413, 422) nor a server error. What a well-formed
request may still meet is a business answer the document names: no logged answer to explain
(404), a package or deployment that cannot go live (409), the outage policy (503).

A timestamp's distance from now is the one rule no JSON Schema keyword can state; the document
states it in words and in ``x-max-skew-seconds``, and the generated timestamps are placed within
it, each keeping its offset.

Without a server, the same generation runs over the score routes of every domain in
``feature_repo/`` (fraud and credit) and of one declaring every field kind, and feeds each
request to the parser the service serves it with, so a domain not served here is held to its
document too; the edges a generator seldom reaches are checked one by one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import schemathesis
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from jsonschema import Draft202012Validator
from schemathesis import checks
from starlette.routing import Route

from feature_repo import clock
from feature_repo.domain import DOMAIN_FILE
from models.package import MANIFEST_FILE, seal_package
from scoring_service.api.app import create_app
from scoring_service.api.domain_api import SKEW_EXTENSION
from scoring_service.api.endpoints import ScoreEndpoint
from scoring_service.core.security import hash_key
from scoring_service.core.settings import Settings
from tests.conftest import ROOT
from tests.feature_repo.test_domain import minimal
from tests.fixtures.service import (
    ADMIN_HEADERS,
    ANALYST_HEADERS,
    API_HEADERS,
    settings_for,
)

pytestmark = pytest.mark.slow

SERVED_EXAMPLES = 40
"""Generated requests per operation and app: 13 operations, two apps, about 1,000 requests."""
PARSED_EXAMPLES = 60
"""Generated requests per score route of every domain, parsed without a server."""
MAX_BATCH_SIZE = 20

# Documented answers a schema-valid request may still get, by business.
BUSINESS_ANSWERS = {
    404: {"answer_not_logged"},
    409: {"deployment_invalid", "model_package_invalid"},
    503: {"feature_store_unavailable", "model_unavailable", "overloaded", "not_ready"},
}
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            # The outage policy's 503s are documented answers; a 500 never is.
            "not_a_server_error": {"expected-statuses": ["2xx", "4xx", "503"]},
            # The right key goes with every request: neither 401 nor 403 is expected.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "503"]},
        }
    }
)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.positive_data_acceptance,
]
DEPLOYMENT = {
    "name": "half and half, copy in shadow",
    "sticky_field": "card_id",
    "salt": "contract",
    "champion": {"name": "champion", "package": "fraud_model/v1", "weight": 0.5},
    "challengers": [{"name": "copy", "package": "fraud_model/v1b", "weight": 0.5}],
    "shadows": [{"name": "copy-shadow", "package": "fraud_model/v1b"}],
}
GENERATION = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def key_for(path: str) -> dict[str, str]:
    """The key each group of routes needs."""
    if path.startswith("/admin"):
        return ADMIN_HEADERS
    if path.endswith("/explanation"):
        return ANALYST_HEADERS
    return API_HEADERS


def skewed_fields(document: dict[str, Any]) -> dict[str, float]:
    """Request properties whose distance from now is bounded, and the bound (seconds)."""
    found: dict[str, float] = {}
    for schema in document["components"]["schemas"].values():
        for name, prop in schema.get("properties", {}).items():
            if SKEW_EXTENSION in prop:
                found[name] = float(prop[SKEW_EXTENSION])
    return found


def near_now(value: str, skew: float) -> str:
    """A generated date-time moved to now, less up to an hour (drawn from its own minutes and
    seconds, at most half the bound), keeping its offset and fraction of a second."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    back = min(60 * moment.minute + moment.second, skew / 2)
    placed = clock.now().astimezone(moment.tzinfo) - timedelta(seconds=back)
    text = placed.replace(microsecond=moment.microsecond).isoformat()
    return text.replace("+00:00", "Z") if value.endswith("Z") else text


def place_timestamps(body: Any, skewed: dict[str, float]) -> None:
    """Every bounded timestamp of a generated body (an object, or the objects of a batch)
    placed within its bound."""
    if isinstance(body, list):
        for item in body:
            place_timestamps(item, skewed)
    elif isinstance(body, dict):
        for name, value in body.items():
            if name in skewed and isinstance(value, str):
                body[name] = near_now(value, skewed[name])
            else:
                place_timestamps(value, skewed)


def for_each_case(operation: Any, examples: int, test: Callable[[Any], None]) -> None:
    """Run ``test`` on ``examples`` positive cases of an operation, the same cases every run."""

    @settings(GENERATION, max_examples=examples)
    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE))
    def run(case: Any) -> None:
        test(case)

    run()


def operations_of(document: dict[str, Any]) -> list[Any]:
    schema = schemathesis.openapi.from_dict(document, config=CONFIG)
    return [result.ok() for result in schema.get_all_operations()]


# --- every operation of the served app ----------------------------------------------------------


@dataclass
class Served:
    """An app with its lifespan running, and its document."""

    client: TestClient
    document: dict[str, Any]


@pytest.fixture(scope="module")
def packages(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's package v1, and v1b: its trees sealed as another version."""
    root = tmp_path_factory.mktemp("contract_packages")
    shutil.copytree(model_root, root, dirs_exist_ok=True)
    target = root / "fraud_model" / "v1b"
    shutil.copytree(root / "fraud_model" / "v1", target)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["version"] = "v1b"
    (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    seal_package(target)
    return root


@pytest.fixture(scope="module", params=["single-model", "deployment"])
def served(
    request: pytest.FixtureRequest,
    sqlite_repo: Path,
    packages: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """The app with its prediction log (explanations answer), with or without a deployment."""
    folder = tmp_path_factory.mktemp(f"contract_{request.param}")
    extra: dict[str, Any] = {"prediction_log_dir": folder / "log", "max_batch_size": MAX_BATCH_SIZE}
    if request.param == "deployment":
        file = folder / "deployment.yaml"
        file.write_text(yaml.safe_dump(DEPLOYMENT, sort_keys=False))
        extra["deployment"] = file
    app = create_app(settings_for(sqlite_repo, packages, **extra))
    with TestClient(app) as client:
        live = client.get("/admin/deployments", headers=ADMIN_HEADERS).json()["live"]
        expected = DEPLOYMENT["name"] if "deployment" in extra else "fraud_model/v1 alone"
        assert live["name"] == expected
        yield Served(client, client.get("/openapi.json").json())


def send(client: TestClient, case: Any) -> Any:
    """A generated case sent to the app, with the key of its route."""
    sent = case.as_transport_kwargs(base_url=str(client.base_url), headers=key_for(case.path))
    content: dict[str, Any] = {}
    if "json" in sent:
        content["json"] = sent["json"]
    elif sent.get("data") is not None:
        content["content"] = sent["data"]
    return client.request(
        sent["method"], sent["url"], headers=sent["headers"], params=sent.get("params"), **content
    )


def check_answer(case: Any, response: Any) -> None:
    """A documented answer, of the documented schema; a refusal only for business."""
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:400]}"
    if response.status_code >= 400:
        allowed = BUSINESS_ANSWERS.get(response.status_code, set())
        assert response.json().get("code") in allowed, where
    case.validate_response(response, checks=CHECKS)


def test_every_operation_answers_what_its_document_admits(served: Served) -> None:
    operations = operations_of(served.document)
    assert len(operations) == 13
    skewed = skewed_fields(served.document)
    failures: list[str] = []

    def exercise(case: Any) -> None:
        place_timestamps(case.body, skewed)
        check_answer(case, send(served.client, case))

    for operation in operations:
        try:
            for_each_case(operation, SERVED_EXAMPLES, exercise)
        except Exception as exc:  # each operation's failure, all reported together
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


# --- the score routes of every domain, without a server -----------------------------------------


def every_kind() -> dict[str, Any]:
    """A domain declaring every field kind, with and without its constraints."""
    data = minimal()
    data["request_fields"].update(
        {
            "note": {"kind": "text", "constraints": {"min_length": 2}, "description": "Note."},
            "source_ip": {
                "kind": "ip_address",
                "constraints": {"canonicalize": False},
                "description": "Sender address, as sent.",
            },
            "currency": {
                "kind": "currency",
                "constraints": {"values": ["EUR", "USD"]},
                "description": "Currency.",
            },
            "country": {
                "kind": "country",
                "constraints": {"values": ["DE", "FR"]},
                "description": "Country.",
            },
            "home_country": {"kind": "country", "required": False, "description": "Home."},
            "kind": {
                "kind": "category",
                "constraints": {"values": ["car", "home"]},
                "description": "What is insured.",
            },
            "cause": {
                "kind": "category",
                "constraints": {"values": ["fire", "theft"], "unknown": "as_missing"},
                "description": "Cause.",
            },
            "claimants": {
                "kind": "integer",
                "constraints": {"ge": 1, "lt": 10},
                "description": "Claimants.",
            },
            "ratio": {"kind": "number", "required": False, "description": "Any number."},
            "filed_at": {
                "kind": "timestamp",
                "constraints": {"max_skew_seconds": 600},
                "description": "When filed.",
            },
            "happened_at": {"kind": "timestamp", "required": False, "description": "When."},
        }
    )
    data["entities"]["source_ip"] = {"join_key": "source_ip", "route": "source-ips"}
    return data


@pytest.fixture(scope="module")
def every_domain(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """An app of every domain of the repository and of one declaring every field kind (built,
    not started: request parsing needs no store)."""
    shipped = sorted(p.parent for p in (ROOT / "feature_repo").glob(f"*/{DOMAIN_FILE}"))
    assert len(shipped) >= 2
    folder = tmp_path_factory.mktemp("every_kind")
    (folder / DOMAIN_FILE).write_text(yaml.safe_dump(every_kind(), sort_keys=False))
    settings = Settings(
        domains=(*shipped, folder),
        api_key_hashes=(hash_key("contract"),),
        max_batch_size=MAX_BATCH_SIZE,
    )
    return create_app(settings)


def parser_of(app: FastAPI, method: str, path: str) -> Any:
    """The parser the service serves a score route's requests with."""
    for route in app.router.routes:
        if not isinstance(route, Route) or not isinstance(route.app, ScoreEndpoint):
            continue
        if route.path == path and method in (route.methods or ()):
            return route.app.parse
    raise AssertionError(f"{method} {path} is not served")


def test_every_domain_parses_what_its_document_admits(every_domain: FastAPI) -> None:
    document = every_domain.openapi()
    skewed = skewed_fields(document)
    # The score routes (single, batch, entity); explanations are FastAPI's own routes.
    operations = [op for op in operations_of(document) if op.path.endswith(("/score", "-batch"))]
    paths = {op.path for op in operations}
    shipped = {"/v1/transactions/score-batch", "/v1/loan-applications/score-batch"}
    assert shipped | {"/v1/source-ips/{source_ip}/score"} <= paths
    failures: list[str] = []
    for operation in operations:
        parse = parser_of(every_domain, operation.method.upper(), operation.path)

        def exercise(case: Any, parse: Any = parse) -> None:
            place_timestamps(case.body, skewed)
            sent = case.body if isinstance(case.body, dict | list) else None
            body = b"" if sent is None else json.dumps(sent).encode()
            # As the router hands them over: decoded.
            params = {k: unquote(str(v)) for k, v in (case.path_parameters or {}).items()}
            parse({"path_params": params}, body)  # InvalidRequest or BatchTooLarge: refused

        try:
            for_each_case(operation, PARSED_EXAMPLES, exercise)
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_edges_of_what_the_document_admits(every_domain: FastAPI) -> None:
    """What a generator seldom sends: a whole number written 22.0 (an integer to JSON Schema),
    and text with surrounding white space (stripped by the service before its length counts,
    so the document refuses it)."""
    document = every_domain.openapi()
    schema = document["components"]["schemas"]["InsuranceClaim"]
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    parse = parser_of(every_domain, "POST", "/v1/insurance-claims/score")
    body = {
        "claim_id": "c1",
        "policy_id": "p1",
        "claimed": 10.0,
        "note": "a b",
        "source_ip": "2001:db8::1",
        "currency": "EUR",
        "country": "FR",
        "kind": "car",
        "cause": "flood",
        "claimants": 2.0,
        "filed_at": clock.now().isoformat(),
    }
    validator.validate(body)
    parsed = parse({}, json.dumps(body).encode())
    assert (parsed.claimants, parsed.note, parsed.cause) == (2, "a b", None)
    for field, value in (("note", " a"), ("note", "a\n"), ("currency", "GBP"), ("country", "US")):
        assert not validator.is_valid({**body, field: value}), (field, value)
