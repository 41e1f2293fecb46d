"""The FastAPI application: ``create_app(settings)`` builds it; nothing happens at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from feature_repo.layout import open_store
from scoring_service.errors import (
    UNEXPECTED_MESSAGE,
    FeatureStoreUnavailable,
    ScoringError,
    error_response,
    response_for,
)
from scoring_service.features import FeastOnlineReader, OnlineFeatureReader, StoreLayout
from scoring_service.observability import RequestIdMiddleware
from scoring_service.redis.reader import RedisFeatureReader, open_fast_redis
from scoring_service.registry import LoadedModel, ModelRegistry
from scoring_service.resilience import ScoringGuard, configure_online_store
from scoring_service.routes import admin, health, score
from scoring_service.scoring import Scorer
from scoring_service.security import KeyRing, RequestLimitsMiddleware, require_keys
from scoring_service.settings import Settings

logger = logging.getLogger(__name__)

HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def validation_message(exc: RequestValidationError) -> str:
    """One sentence per invalid field, naming the field and what it must be."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(
            str(p) for p in err.get("loc", ()) if p not in ("body", "path", "query", "header")
        )
        kind = err.get("type", "")
        msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        if kind == "missing":
            msg = "is required"
        elif kind == "extra_forbidden":
            msg = "is not a field of this request; remove it"
        elif kind == "json_invalid":
            loc, msg = "body", "is not valid JSON"
        elif kind in ("finite_number",):
            msg = "must be a finite number"
        parts.append(f"{loc or 'body'}: {msg}")
    more = len(exc.errors()) - len(parts)
    suffix = f" (and {more} more)" if more > 0 else ""
    return "; ".join(parts) + suffix


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal leaves as {code, stage, message, request_id}."""

    @app.exception_handler(ScoringError)
    async def _scoring_error(_: Request, exc: ScoringError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("%s at %s: %s", exc.code, exc.stage, exc.message, exc_info=exc.__cause__)
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", "request", validation_message(exc))

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
    """Build the scoring service; resources open in the lifespan and close with it."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        require_keys(settings)
        store = open_store(settings.feature_repo, settings.feature_store_yaml)
        configure_online_store(store, settings)
        registry = ModelRegistry(
            settings.model_root,
            store,
            device=settings.device,
            intra_op_threads=settings.intra_op_threads,
            gpu_min_batch=settings.gpu_min_batch,
            gpu_device_id=settings.gpu_device_id,
        )
        model = registry.load(settings.model_name, settings.model_version)
        # Redis is read by the fast reader (Feast's layout, pipelined); other stores by Feast.
        redis_client = open_fast_redis(store, settings)

        def open_reader(layout: StoreLayout) -> OnlineFeatureReader:
            if redis_client is None:
                return FeastOnlineReader(store, layout)
            return RedisFeatureReader(layout, redis_client, store.config.project)

        def new_scorer(loaded: LoadedModel, reader: OnlineFeatureReader | None = None) -> Scorer:
            return Scorer(
                loaded,
                reader or open_reader(loaded.layout),
                micro_batching=settings.micro_batching,
                batch_max_rows=settings.batch_max_rows,
                batch_max_wait_s=settings.batch_max_wait_ms / 1000,
            )

        reader = open_reader(model.layout)
        try:
            try:
                reader.ping()
                if isinstance(reader, RedisFeatureReader):
                    await reader.ping_async()  # opens the event loop's connection before traffic
            except FeatureStoreUnavailable:
                logger.warning("online store not reachable at start-up; not ready until it is")
            app.state.registry = registry
            app.state.scorer = new_scorer(model, reader)

            def build_scorer(loaded: LoadedModel) -> Scorer:
                # Used by the admin reload route to swap in a newly verified model.
                return new_scorer(loaded)

            app.state.build_scorer = build_scorer
            logger.info(
                "ready: model %s on %s, store %s",
                model.version_label,
                model.device,
                store.config.online_store.type,
            )
            yield
        finally:
            scorer, app.state.scorer = app.state.scorer, None
            if scorer is not None:
                await scorer.aclose()  # batches in progress finish
            reader.close()
            if redis_client is not None:
                redis_client.close()
            logger.info("stopped")

    app = FastAPI(
        title="Fraud scoring service",
        version="0.1.0",
        description="Scores payments with Feast online features and an ONNX model, answering "
        "with a business label: not_fraud, suspicious, highly_suspicious or uncertain.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.scorer = None
    app.state.keyring = KeyRing.from_settings(settings)
    app.state.guard = ScoringGuard(settings)
    # Added before RequestIdMiddleware, so it runs inside it and its 413s carry the request id.
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    app.include_router(score.router)
    app.include_router(health.router)
    app.include_router(admin.router)

    # Open like the health routes: counts and latencies only, no keys, settings or request
    # data. Restrict it at the network level where even that is too much.
    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
