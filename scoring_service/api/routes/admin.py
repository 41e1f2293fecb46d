"""Admin: deployments (apply, roll back, history), model reload, the running configuration.

Every route needs an admin key.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Security
from pydantic import BaseModel, ConfigDict, Field

from scoring_service.api.deps import SettingsDep
from scoring_service.core.errors import NotReady
from scoring_service.core.schemas import ErrorResponse
from scoring_service.core.security import API_KEY_HEADER, KeyRing, KeyScope, hash_key, require_scope
from scoring_service.core.settings import Settings
from scoring_service.deployments.packages import LoadedModel, ModelRegistry

router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Security(require_scope(KeyScope.ADMIN))]
)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No API key, or an unknown one."},
    403: {"model": ErrorResponse, "description": "The key is not an admin key."},
    503: {"model": ErrorResponse, "description": "The service is starting or stopping."},
}
INVALID_BODY: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "The body is not JSON of the documented shape."},
}

PackagePart = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
]
"""A package name or version: one folder name, never a path."""


class ReloadRequest(BaseModel):
    """Which model package to serve from now on."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "fraud_model", "version": "v2"}]}
    )

    name: PackagePart
    version: PackagePart


class ModelSummary(BaseModel):
    """The model package now serving."""

    model_config = ConfigDict(protected_namespaces=())

    model_version: str
    feature_service: str
    features: list[str]
    label_thresholds: dict[str, float | str]
    graphs: dict[str, str] = Field(description="Graph key -> file name.")
    checksums: dict[str, str] = Field(description="File -> sha256 from the manifest.")
    created_at: str
    device: str
    graph: str


class ConfigResponse(BaseModel):
    """Non-secret settings, key counts (never the keys or their hashes) and the live model."""

    settings: dict[str, Any]
    api_keys: dict[str, int]
    model: ModelSummary | None


def summarize(model: LoadedModel) -> ModelSummary:
    """What an operator needs to know about a loaded package."""
    manifest = model.manifest
    files = {graph.file: graph.sha256 for graph in manifest.graphs.values()}
    return ModelSummary(
        model_version=model.version_label,
        feature_service=manifest.feature_service,
        features=list(manifest.features),
        label_thresholds=manifest.label_thresholds.model_dump(),
        graphs={key: graph.file for key, graph in manifest.graphs.items()},
        checksums={**files, **manifest.artefacts},
        created_at=manifest.created_at.isoformat(),
        device=model.device,
        graph=model.graph,
    )


def public_settings(settings: Settings) -> dict[str, Any]:
    """Every setting except secret ones (fields declared with repr=False)."""
    out: dict[str, Any] = {}
    for name, field in type(settings).model_fields.items():
        if not field.repr:
            continue
        value = getattr(settings, name)
        out[name] = str(value) if isinstance(value, Path) else value
    return out


@router.get("/config", response_model=ConfigResponse, responses=ERRORS)
async def config(request: Request, settings: SettingsDep) -> ConfigResponse:
    """The running configuration: settings (secrets left out) and the live model manifest."""
    keyring: KeyRing = request.app.state.keyring
    scorer = request.app.state.primary.scorer
    return ConfigResponse(
        settings=public_settings(settings),
        api_keys={scope.value: keyring.counts.get(scope, 0) for scope in KeyScope},
        model=summarize(scorer.model) if scorer is not None else None,
    )


@router.post(
    "/models/reload",
    response_model=ModelSummary,
    responses={
        **ERRORS,
        **INVALID_BODY,
        409: {
            "model": ErrorResponse,
            "description": "The package is refused (damaged, or does not match the live "
            "feature store); the running version keeps serving.",
        },
    },
)
async def reload_model(body: ReloadRequest, request: Request) -> ModelSummary:
    """Verify a package and swap it in; on refusal the running version keeps serving."""
    primary = request.app.state.primary
    registry: ModelRegistry | None = primary.registry
    build = primary.build_scorer
    if registry is None or build is None:
        raise NotReady("The scoring service is starting or stopping; retry in a moment.")
    # Loading and warming a graph blocks: keep it off the event loop. The registry lets one
    # reload run at a time, so swaps happen in the order the reloads finished.
    loaded = await asyncio.to_thread(registry.reload, body.name, body.version)
    primary.scorer = build(loaded)
    return summarize(loaded)


# --- deployments ---------------------------------------------------------------------------------

DEPLOYMENT_EXAMPLE = {
    "name": "fraud v2 with a v1 control group",
    "sticky_field": "card_id",
    "salt": "2026-12",
    "champion": {"name": "champion", "package": "fraud_model/v2", "weight": 0.9},
    "challengers": [{"name": "v1-control", "package": "fraud_model/v1", "weight": 0.1}],
    "shadows": [{"name": "v1-shadow", "package": "fraud_model/v1"}],
    "fallback": [{"name": "request-only", "package": "fraud_model/rt"}],
}
REFUSED: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorResponse,
        "description": "deployment_invalid: the deployment cannot go live (unknown package, "
        "weights not summing to 1, a fallback cycle, an ensemble member with other entities, "
        "an unknown sticky field, ...); the message names the fault and the live deployment "
        "keeps serving.",
    }
}


def _manager(request: Request) -> Any:
    manager = request.app.state.primary.deployments
    if manager is None:
        raise NotReady("The scoring service is starting or stopping; retry in a moment.")
    return manager


def _key_id(request: Request) -> str:
    """Which admin key asked: the first 12 hex digits of its sha256 (never the key)."""
    key = request.headers.get(API_KEY_HEADER, "")
    return f"key:{hash_key(key)[:12]}"


@router.get("/deployments", responses=ERRORS)
async def deployments(request: Request) -> dict[str, Any]:
    """The live deployment, the one a rollback would restore, and the history of changes."""
    return _manager(request).describe()  # type: ignore[no-any-return]


@router.post("/deployments", responses={**ERRORS, **INVALID_BODY, **REFUSED})
async def apply_deployment(
    request: Request,
    body: Annotated[
        dict[str, Any], Body(openapi_examples={"canary": {"value": DEPLOYMENT_EXAMPLE}})
    ],
) -> dict[str, Any]:
    """Validate a deployment completely (every package loads and is sealed, its graphs agree,
    its features are in the live feature store, thresholds rise, the sticky field exists) and
    swap it in atomically; requests in flight finish on the deployment they started on."""
    manager = _manager(request)
    live = await manager.apply(body, _key_id(request))
    return {"live": live.spec.name, "history": manager.describe()["history"][-1]}


@router.post("/deployments/rollback", responses={**ERRORS, **REFUSED})
async def rollback_deployment(request: Request) -> dict[str, Any]:
    """Restore the previous deployment (kept open: no loading, so it takes effect at once)."""
    manager = _manager(request)
    live = await manager.rollback(_key_id(request))
    return {"live": live.spec.name, "history": manager.describe()["history"][-1]}
