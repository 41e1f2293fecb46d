"""The FastAPI application: ``create_app(settings)`` builds it; nothing happens at import."""

from __future__ import annotations

import asyncio
import logging
import os
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

from feature_repo.layout import open_store
from scoring_service.deployment import (
    DeploymentInvalid,
    DeploymentSpec,
    load_deployment,
    single_model,
)
from scoring_service.errors import (
    UNEXPECTED_MESSAGE,
    DeploymentRefused,
    FeatureStoreUnavailable,
    ScoringError,
    error_response,
    response_for,
    validation_message,
)
from scoring_service.features import FeastOnlineReader, OnlineFeatureReader, StoreLayout
from scoring_service.observability import RequestIdMiddleware, flush_logging
from scoring_service.redis.reader import RedisFeatureReader, open_fast_redis
from scoring_service.registry import LoadedModel, domain_of
from scoring_service.resilience import ScoringGuard, configure_online_store
from scoring_service.rollout import DeploymentManager
from scoring_service.routes import admin, explanations, health, score
from scoring_service.routes.fast import ScoringApp
from scoring_service.routing import LiveDeployment
from scoring_service.runtime import metrics_exposition, process_stopped, settle_heap
from scoring_service.scoring import Scorer
from scoring_service.security import KeyRing, RequestLimitsMiddleware, require_keys
from scoring_service.served import (
    OpenScoring,
    ServedDomain,
    close_answers,
    load_options,
    open_answers,
    open_registry,
    open_scoring,
    served_domains,
)
from scoring_service.settings import Settings

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


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the scoring service; resources open in the lifespan and close with it.

    Every domain of ``settings`` (``served.served_domains``) gets its routes, built from its
    domain file now; the first one is primary: its store, deployment and model open first, and
    the admin routes act on it. Each domain's prediction log opens after its scorer and closes
    after it, so the answers of the last calls are in it.
    """
    settings = settings or Settings()
    domains = served_domains(settings)
    primary = domains[0]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        require_keys(settings)
        store = open_store(primary.folder, primary.yaml)
        configure_online_store(store, settings)
        registry = open_registry(store, settings)
        model = registry.load(primary.model_name, primary.model_version)
        # Redis is read by the fast reader (Feast's layout, pipelined); other stores by Feast.
        redis_client = open_fast_redis(store, settings)

        def open_reader(layout: StoreLayout) -> OnlineFeatureReader:
            if redis_client is None:
                return FeastOnlineReader(store, layout)
            return RedisFeatureReader(layout, redis_client, store.config.project)

        def new_scorer(
            loaded: LoadedModel,
            reader: OnlineFeatureReader | None = None,
            deployment: LiveDeployment | None = None,
        ) -> Scorer:
            # score-batch's model call uses every core (a second session; small calls keep one).
            loaded.predictor.add_batch_session(
                settings.batch_intra_op_threads or os.cpu_count() or 1
            )
            layout = deployment.layout if deployment is not None else loaded.layout
            return Scorer(
                loaded,
                reader or open_reader(layout),
                micro_batching=settings.micro_batching,
                batch_max_rows=settings.batch_max_rows,
                batch_max_wait_s=settings.batch_max_wait_ms / 1000,
                deployment=deployment,
                shadow_time_share=settings.shadow_time_share,
            )

        domain = domain_of(store)

        def load_live(spec: DeploymentSpec) -> LiveDeployment:
            return LiveDeployment.load(
                spec,
                str(settings.model_root),
                store,
                request_fields=list(domain.request_fields) if domain is not None else None,
                **load_options(settings),
            )

        def scorer_of(live: LiveDeployment) -> Scorer:
            return new_scorer(live.champion.members[0].model, deployment=live)

        if settings.deployment is not None:
            try:
                live = load_live(load_deployment(settings.deployment))
            except DeploymentInvalid as exc:
                raise DeploymentRefused(str(exc)) from exc
        else:
            sticky = next(iter(model.manifest.entity_mapping))
            live = load_live(single_model(model.version_label, sticky))
        manager = DeploymentManager(
            app.state, load_live, scorer_of, model.manifest.domain, settings.deployment
        )
        app.state.deployments = manager
        reader = open_reader(live.layout)
        hangup: Callable[[], None] | None = None
        others: list[tuple[ServedDomain, OpenScoring]] = []
        try:
            try:
                reader.ping()
                if isinstance(reader, RedisFeatureReader):
                    await reader.ping_async()  # opens the event loop's connection before traffic
            except FeatureStoreUnavailable:
                logger.warning("online store not reachable at start-up; not ready until it is")
            app.state.registry = registry
            first = new_scorer(live.champion.members[0].model, reader, live)
            first.start()
            manager.start(live, first)
            hangup = _on_hangup(manager) if settings.deployment is not None else None

            def build_scorer(loaded: LoadedModel) -> Scorer:
                # Used by the admin reload route to swap in a newly verified model.
                return new_scorer(loaded)

            app.state.build_scorer = build_scorer
            # Warm (model sessions run, store connection open): what is alive now lives as
            # long as the process; collections never walk it again.
            for other in domains[1:]:
                opened = await open_scoring(other, settings)
                other.scorer = opened.scorer
                others.append((other, opened))
            for served in domains:
                open_answers(served, settings)
            settle_heap(settings.gc_freeze, settings.gc_thresholds)
            logger.info(
                "ready: model %s on %s, store %s",
                model.version_label,
                model.device,
                store.config.online_store.type,
            )
            yield
        finally:
            if hangup is not None:
                hangup()
            scorer, app.state.scorer = app.state.scorer, None
            if scorer is not None:
                await scorer.aclose()  # batches in progress finish
            for other, opened in others:
                other.scorer = None
                await opened.aclose()
            reader.close()
            if redis_client is not None:
                redis_client.close()
            for served in domains:
                close_answers(served)  # drained and rolled: a graceful stop loses no answer
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
    app.state.scorer = None
    app.state.keyring = KeyRing.from_settings(settings)
    app.state.guard = ScoringGuard(settings)
    # Added before RequestIdMiddleware, so it runs inside it and its 413s carry the request id.
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    # The score routes are served by pure ASGI endpoints (routes/fast.py); their FastAPI
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
        # Every worker's samples when several serve (scoring_service/runtime.py).
        return Response(metrics_exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


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
        spec = domain.api.spec
        labels = ", ".join(spec.labels)
        lines.append(
            f"- **{spec.name}** (`/v1/{spec.resource}`): {spec.description or spec.score_meaning} "
            f"Labels: {labels}, or {spec.uncertain_label}."
        )
    return "\n".join(lines)


def create_app_from_env() -> FastAPI:
    """``create_app`` with settings from SCORING_* variables: the factory each worker process
    of ``python -m scoring_service serve`` loads."""
    return create_app(Settings())


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
