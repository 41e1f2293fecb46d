"""The app factory: ``create_app`` lays out every served domain's routes and opens nothing;
its lifespan opens each domain, settles the heap and closes them; every refusal leaves in the
one envelope; the OpenAPI document shows the score routes the app serves outside FastAPI."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Route

from scoring_service.api.app import create_app, create_app_from_env, describe
from scoring_service.api.endpoints import ScoreEndpoint
from scoring_service.core.errors import ConfigurationInvalid
from scoring_service.core.security import hash_key
from scoring_service.core.settings import Settings
from scoring_service.served import served_domains
from tests.conftest import ROOT
from tests.fixtures.service import ANALYST_HEADERS, API_KEY, settings_for

FRAUD = ROOT / "feature_repo" / "fraud"
CREDIT = ROOT / "feature_repo" / "credit"
SERVED = {
    ("/v1/transactions/score", "POST"),
    ("/v1/transactions/score-batch", "POST"),
    ("/v1/ip-addresses/{ip_address}/score", "GET"),
    ("/v1/cards/{card_id}/score", "GET"),
    ("/v1/merchants/{merchant_id}/score", "GET"),
}


def served_routes(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {
        (route.path, method)
        for route in app.router.routes
        if isinstance(route, Route) and isinstance(route.app, ScoreEndpoint)
        for method in route.methods or ()
        if method != "HEAD"
    }


def test_building_the_app_lays_out_routes_and_opens_nothing() -> None:
    app = create_app(Settings(api_key_hashes=(hash_key(API_KEY),), feature_repo=FRAUD))
    assert served_routes(app) == SERVED
    assert {
        "/v1/transactions/{transaction_id}/explanation",
        "/health/live",
        "/health/ready",
        "/admin/config",
    } <= set(app.openapi()["paths"])
    unstarted = TestClient(app)  # no `with`: the lifespan does not run
    assert unstarted.get("/metrics").status_code == 200
    assert unstarted.get("/health/live").json()["status"] == "alive"
    primary = app.state.primary
    assert primary.primary and app.state.domains == {"fraud": primary}
    assert primary.api.score_path == "/v1/transactions/score"
    assert primary.scorer is None and primary.deployments is None  # opened by the lifespan only


def test_two_domains_get_their_own_routes() -> None:
    app = create_app(Settings(api_key_hashes=(hash_key(API_KEY),), domains=(FRAUD, CREDIT)))
    assert served_routes(app) == SERVED | {
        ("/v1/loan-applications/score", "POST"),
        ("/v1/loan-applications/score-batch", "POST"),
    }
    assert list(app.state.domains) == ["fraud", "credit"]
    assert app.state.primary is app.state.domains["fraud"]


def test_domains_whose_entity_routes_clash_are_refused(tmp_path: Path) -> None:
    """Another name and resource, the same entity routes (cards, merchants, IP addresses)."""
    twin = tmp_path / "payments_again"
    twin.mkdir()
    text = (FRAUD / "domain.yaml").read_text()
    text = text.replace("name: fraud\n", "name: payments\n", 1)
    text = text.replace("resource: transactions\n", "resource: payments\n", 1)
    (twin / "domain.yaml").write_text(text)
    settings = Settings(api_key_hashes=(hash_key(API_KEY),), domains=(FRAUD, twin))
    domains = served_domains(settings)  # name and resource differ: resolved
    with pytest.raises(ConfigurationInvalid) as refused:
        create_app(settings, domains)
    assert refused.value.message == (
        "the domains served (fraud, payments) must differ in name, resource and entity routes"
    )


def test_the_description_lists_each_domain_and_its_labels() -> None:
    domains = served_domains(Settings(domains=(FRAUD, CREDIT)))
    text = describe(domains)
    assert (
        "- **fraud** (`/v1/transactions`): Card payments scored for fraud at authorization "
        "time. Labels: not_fraud, suspicious, highly_suspicious, or uncertain."
    ) in text.splitlines()
    assert any(
        line.startswith("- **credit** (`/v1/loan-applications`)")
        and line.endswith("Labels: approve, manual_review, decline, or uncertain.")
        for line in text.splitlines()
    )


def test_the_document_shows_the_served_routes_and_not_the_metrics() -> None:
    app = create_app(Settings(api_key_hashes=(hash_key(API_KEY),), feature_repo=FRAUD))
    document = app.openapi()
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if path.startswith("/v1/") and not path.endswith("/explanation")
    }
    assert documented == SERVED
    assert "/metrics" not in document["paths"]
    assert next(iter(document["paths"])) == "/v1/transactions/score"  # before the app's own
    assert app.openapi() is document  # built once


def test_the_lifespan_opens_settles_and_closes(
    sqlite_repo: Path, model_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(sqlite_repo, model_root, gc_thresholds=(12_345, 10, 10))
    app = create_app(settings)
    thresholds = gc.get_threshold()
    try:
        with caplog.at_level(logging.INFO, logger="scoring_service.api.app"), TestClient(app):
            primary = app.state.primary
            assert primary.scorer is not None and primary.deployments is not None
            assert gc.get_threshold() == (12_345, 10, 10)
            assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*thresholds)
    assert primary.scorer is None and primary.deployments is None
    messages = [r.getMessage() for r in caplog.records if r.name == "scoring_service.api.app"]
    assert messages[0].startswith("ready: model fraud_model/v1 on ")
    assert messages[0].endswith(", domains fraud")
    assert messages[-1] == "stopped"


def test_framework_refusals_leave_in_the_envelope(sqlite_repo: Path, model_root: Path) -> None:
    app = create_app(settings_for(sqlite_repo, model_root))
    with TestClient(app, headers=ANALYST_HEADERS) as client:
        invalid = client.get("/v1/transactions/tx_1/explanation", params={"top": 0})
        missing = client.get("/v1/nowhere")
        wrong = client.delete("/health/live")
    assert invalid.status_code == 422
    assert invalid.json()["code"] == "invalid_request" and invalid.json()["stage"] == "request"
    assert invalid.json()["message"].startswith("top: ")
    assert missing.status_code == 404
    assert missing.json()["message"] == "No such route; see /docs for the API."
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
    for response in (invalid, missing, wrong):
        body = response.json()
        assert set(body) == {"code", "stage", "message", "request_id"}
        assert body["request_id"] == response.headers["x-request-id"]


def test_the_worker_factory_reads_the_environment(
    sqlite_repo: Path, model_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCORING_FEATURE_REPO", str(sqlite_repo))
    monkeypatch.setenv("SCORING_MODEL_ROOT", str(model_root))
    monkeypatch.setenv("SCORING_API_KEY_HASHES", hash_key(API_KEY))
    monkeypatch.setenv("SCORING_MAX_BATCH_SIZE", "7")
    app = create_app_from_env()
    assert app.state.settings.model_root == model_root
    assert app.state.settings.max_batch_size == 7
    assert app.state.primary.folder == sqlite_repo
