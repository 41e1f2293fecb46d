"""Health: liveness (the process is up) and readiness (store reachable, model loaded).

Readiness covers every served domain: the primary one's checks are ``model`` and
``feature_store``, another domain's ``model:<domain>`` and ``feature_store:<domain>``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from scoring_service.core.errors import FeatureStoreUnavailable
from scoring_service.core.schemas import HealthResponse

router = APIRouter(prefix="/health", tags=["health"])
logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 1.0


@router.get("/live", response_model=HealthResponse)
async def live() -> HealthResponse:
    """The process is up and answering."""
    return HealthResponse(status="alive")


@router.get("/ready", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def ready(request: Request) -> JSONResponse:
    """Ready when a model is loaded and the online store answers a real read."""
    primary = getattr(request.app.state, "primary", None)
    scorer = primary.scorer if primary is not None else None
    checks: dict[str, str] = {}
    if scorer is None:
        checks["model"] = "not loaded"
        checks["feature_store"] = "unknown"
    else:
        checks["model"] = "loaded"
        checks["feature_store"] = await _store_check(scorer)
    for domain in getattr(request.app.state, "domains", {}).values():
        if domain.primary:
            continue
        other = domain.scorer
        checks[f"model:{domain.name}"] = "loaded" if other is not None else "not loaded"
        checks[f"feature_store:{domain.name}"] = (
            await _store_check(other) if other is not None else "unknown"
        )
    ok = all(v in ("loaded", "reachable") for v in checks.values())
    body = HealthResponse(
        status="ready" if ok else "not_ready",
        checks=checks,
        model_version=scorer.model.version_label if scorer else None,
        device=scorer.model.device if scorer else None,
        graph=scorer.model.graph if scorer else None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


async def _store_check(scorer: Any) -> str:
    """Whether a scorer's online store answers a real read in time."""
    try:
        await asyncio.wait_for(asyncio.to_thread(scorer.reader.ping), READY_TIMEOUT_S)
    except (FeatureStoreUnavailable, TimeoutError):
        return "unreachable"
    return "reachable"
