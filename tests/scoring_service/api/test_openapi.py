"""The scoring routes' contract in /openapi.json is the one clients were built against.

``openapi_score_routes.json`` holds the /v1 routes' operations (parameters, request bodies,
responses, security) and every component schema they reference. The routes and their models are
built from the domain file now (``scoring_service.api.domain_api``); the reference was regenerated
once
for that, with the changes docs/api.md lists ("The OpenAPI document: what changed on purpose"),
and must not change again by accident.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from scoring_service.api.app import create_app
from scoring_service.core.security import hash_key
from scoring_service.core.settings import Settings

REFERENCE = Path(__file__).with_name("openapi_score_routes.json")
SCORE_PREFIX = "/v1/"


def _refs(node: Any) -> set[str]:
    """Names of the component schemas a piece of the document points to."""
    if isinstance(node, dict):
        found = set()
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


def score_route_contract(document: dict[str, Any]) -> dict[str, Any]:
    """The score routes' operations and the schemas they reach, transitively."""
    paths = {p: item for p, item in document["paths"].items() if p.startswith(SCORE_PREFIX)}
    schemas = document["components"]["schemas"]
    wanted, todo = set(), _refs(paths)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo |= _refs(schemas[name])
    return {
        "paths": paths,
        "schemas": {name: schemas[name] for name in sorted(wanted)},
        "securitySchemes": document["components"].get("securitySchemes", {}),
    }


def app_document() -> dict[str, Any]:
    """The OpenAPI document of an app built with default settings (nothing starts)."""
    app: FastAPI = create_app(Settings(api_key_hashes=(hash_key("openapi"),)))
    return app.openapi()


def test_score_routes_documented_as_before() -> None:
    reference = json.loads(REFERENCE.read_text())
    assert score_route_contract(app_document()) == reference


def test_every_score_route_is_documented() -> None:
    paths = set(score_route_contract(app_document())["paths"])
    assert paths == {
        "/v1/transactions/score",
        "/v1/transactions/score-batch",
        "/v1/ip-addresses/{ip_address}/score",
        "/v1/cards/{card_id}/score",
        "/v1/merchants/{merchant_id}/score",
        "/v1/transactions/{transaction_id}/explanation",
    }
