"""The FastAPI application: ``create_app(settings)`` builds it; nothing happens at import."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from scoring_service.api.admission import Admission, AdmissionMiddleware, Classifier
from scoring_service.api.domain_api import DomainApi
from scoring_service.api.endpoints import ScoringApp
from scoring_service.api.routes import admin, explanations, health, score
from scoring_service.api.server import BoundedHttpToolsProtocol
from scoring_service.core.errors import (
    UNEXPECTED_MESSAGE,
    ConfigurationInvalid,
    ScoringError,
    error_response,
    response_for,
    validation_message,
)
from scoring_service.core.logs import RequestIdMiddleware, flush_logging
from scoring_service.core.process import metrics_exposition, process_stopped, settle_heap
from scoring_service.core.security import KeyRing, RequestLimitsMiddleware, require_keys
from scoring_service.core.settings import Settings
from scoring_service.deployments.rollout import DeploymentManager
from scoring_service.scoring.resilience import ScoringGuard
from scoring_service.served import ServedDomain, close_domain, open_domain, served_domains

logger = logging.getLogger(__name__)

HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal leaves as {code, stage, message, request_id}."""

    @app.exception_handler(ScoringError)
    async def _scoring_error(_: Request, exc: ScoringError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("%s at %s: %s", exc.code, exc.stage, exc.message, exc_info=exc.__cause__)
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", "request", validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        message = {
            400: "The request body could not be read; send UTF-8 JSON with content-type "
            "application/json.",
            404: "No such route; see /docs for the API.",
            405: "This route does not accept that method; see /docs for the API.",
        }.get(exc.status_code, str(exc.detail))
        return error_response(
            exc.status_code, code, "request", message, getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error", exc_info=exc)
        return error_response(500, "internal_error", "service", UNEXPECTED_MESSAGE)


def create_app(
    settings: Settings | None = None, domains: list[ServedDomain] | None = None
) -> FastAPI:
    """Build the scoring service over its served domains; they open in the lifespan and close
    with it.

    ``domains`` defaults to the settings' (``served.served_domains``), the first one primary
    (the admin routes act on it). The factory lays out each domain's routes, built from its
    domain file now; the lifespan opens every domain the same way (``served.open_domain``),
    primary first, and closes them in the same order.
    """
    settings = settings or Settings()
    domains = domains if domains is not None else served_domains(settings)
    for served in domains:
        served.api = DomainApi.build(served.spec, settings.max_batch_size)
    _check_routes_differ(domains)
    primary = domains[0]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        require_keys(settings)
        hangup: Callable[[], None] | None = None
        try:
            for served in domains:
                await open_domain(served, settings)
            if primary.deployment_file is not None and primary.deployments is not None:
                hangup = _on_hangup(primary.deployments)
            # What is alive now lives as long as the process; collections never walk it again.
            settle_heap(settings.gc_freeze, settings.gc_thresholds)
            model = primary.scorer.model if primary.scorer is not None else None
            logger.info(
                "ready: model %s on %s, domains %s",
                model.version_label if model is not None else None,
                model.device if model is not None else None,
                ", ".join(d.name for d in domains),
            )
            yield
        finally:
            if hangup is not None:
                hangup()
            for served in domains:
                await close_domain(served)  # batches finish, then a drained prediction log
            process_stopped()
            logger.info("stopped")
            flush_logging()

    app = ScoringApp(
        title="Scoring service",
        version="0.1.0",
        description=describe(domains),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.domains = {domain.name: domain for domain in domains}
    app.state.primary = primary
    app.state.keyring = KeyRing.from_settings(settings)
    app.state.guard = ScoringGuard(settings)
    # Innermost: admission refuses from the headers alone, before the body is read; its
    # refusals carry the request id (api/admission.py).
    app.state.admission = admission(settings)
    classify = Classifier(domains)
    app.add_middleware(AdmissionMiddleware, admission=app.state.admission, classify=classify)
    # The server's protocol refuses at the limit before a request becomes an ASGI call
    # (api/server.py); the app served last in a process is the one it guards.
    BoundedHttpToolsProtocol.gate = (app.state.admission, classify)
    # Added before RequestIdMiddleware, so it runs inside it and its 413s carry the request id.
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    # The score routes are served by pure ASGI endpoints (api/endpoints.py); their FastAPI
    # definitions document them in /openapi.json and /docs, and are not served.
    app.router.routes.extend(score.serving_routes(app, domains))
    document(app, score.documented_router(domains, settings.max_batch_size))
    app.include_router(explanations.router(domains))
    app.include_router(health.router)
    app.include_router(admin.router)

    # Open like the health routes: counts and latencies only, no keys, settings or request
    # data. Restrict it at the network level where even that is too much.
    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        # Every worker's samples when several serve (scoring_service/core/process.py).
        return Response(metrics_exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def admission(settings: Settings) -> Admission:
    """The process's admission state; ConfigurationInvalid for malformed key quotas."""
    try:
        return Admission(settings)
    except ValueError as exc:
        raise ConfigurationInvalid(f"SCORING_KEY_QUOTAS: {exc}") from None


def _check_routes_differ(domains: list[ServedDomain]) -> None:
    """ConfigurationInvalid unless the domains' score and entity routes are all different."""
    paths = [p for d in domains for p in (d.api.score_path, *(r.path for r in d.api.entity_routes))]
    if len(set(paths)) != len(paths):
        names = ", ".join(d.name for d in domains)
        raise ConfigurationInvalid(
            f"the domains served ({names}) must differ in name, resource and entity routes"
        )


def _on_hangup(manager: DeploymentManager) -> Callable[[], None] | None:
    """Reload the deployment file on SIGHUP; the remover of the handler (None where signals
    cannot be handled here, e.g. off the main thread)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(
            signal.SIGHUP, lambda: loop.create_task(manager.reload_file("signal"))
        )
    except (ValueError, RuntimeError, NotImplementedError):
        return None

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove


def describe(domains: list[ServedDomain]) -> str:
    """The API's description: what each served domain scores, and its labels."""
    lines = [
        "Scores business objects with Feast online features and an ONNX model, answering with "
        "a business label and its reasons. Served domains:",
        "",
    ]
    for domain in domains:
        spec = domain.spec
        labels = ", ".join(spec.labels)
        lines.append(
            f"- **{spec.name}** (`/v1/{spec.resource}`): {spec.description or spec.score_meaning} "
            f"Labels: {labels}, or {spec.uncertain_label}."
        )
    return "\n".join(lines)


def create_app_from_env() -> FastAPI:
    """``create_app`` with settings from SCORING_* variables: the factory each worker process
    of ``python -m scoring_service serve`` loads (its server protocol takes the settings'
    connection limits too)."""
    settings = Settings()
    BoundedHttpToolsProtocol.configure(settings)
    return create_app(settings)


def document(app: FastAPI, *routers: APIRouter) -> None:
    """Show routes the app serves outside FastAPI's routing in its OpenAPI document (and so in
    /docs), from their FastAPI definitions, in front of the app's own routes."""
    documented = APIRouter()
    for router in routers:
        documented.include_router(router)

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                summary=app.summary,
                description=app.description,
                terms_of_service=app.terms_of_service,
                contact=app.contact,
                license_info=app.license_info,
                routes=[*documented.routes, *app.routes],
                webhooks=app.webhooks.routes,
                tags=app.openapi_tags,
                servers=app.servers,
                separate_input_output_schemas=app.separate_input_output_schemas,
                external_docs=app.openapi_external_docs,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
