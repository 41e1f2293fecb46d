"""Models shared by every domain's API: entity freshness, the error envelope, health.

Each domain's request and answer models are built from its domain file
(``scoring_service.api.domain_api``); what is the same for all of them lives here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

EntityStatus = Literal["present", "missing", "stale", "not_requested"]


class EntityFreshness(BaseModel):
    """What the online store knew about one entity of the request."""

    status: EntityStatus
    age_seconds: float | None = Field(
        default=None, description="Age of the entity's features, when present or stale."
    )


class ErrorResponse(BaseModel):
    """Every error the service returns."""

    code: str = Field(description="Stable machine-readable code.", examples=["invalid_request"])
    stage: str = Field(description="Stage that refused the request.", examples=["request"])
    message: str = Field(description="What went wrong and what to do about it.")
    request_id: str


class HealthResponse(BaseModel):
    """Liveness / readiness."""

    status: Literal["alive", "ready", "not_ready"]
    checks: dict[str, str] = Field(default_factory=dict)
    model_version: str | None = None
    device: str | None = None
    graph: str | None = None
