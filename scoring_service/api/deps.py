"""Dependencies of the routes, as Annotated aliases so tests can override them.

They are `async def` on purpose: FastAPI runs plain `def` dependencies in its thread pool, a
thread hand-off per dependency per request on the hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Request

from scoring_service.core.errors import NotReady
from scoring_service.core.settings import Settings
from scoring_service.scoring.resilience import (
    Deadline,
    ScoringGuard,
    get_batch_deadline,
    get_deadline,
)
from scoring_service.scoring.scorer import Scorer

if TYPE_CHECKING:
    from scoring_service.served import ServedDomain


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


NOT_READY = "The scoring service is starting or stopping; retry in a moment."


async def get_scorer(request: Request) -> Scorer:
    """The live scorer, or 503 not_ready while starting or stopping."""
    primary = getattr(request.app.state, "primary", None)
    scorer = primary.scorer if primary is not None else None
    if scorer is None:
        raise NotReady(NOT_READY)
    return scorer


def live_scorer(app: FastAPI, domain: ServedDomain | None = None) -> Scorer:
    """The live scorer of a domain (default: the primary one) for routes served without
    dependency injection (``api/endpoints.py``).

    Every domain's live scorer is on its ``ServedDomain`` (its deployment manager swaps it).
    A test's ``app.dependency_overrides[get_scorer]``
    applies there too; it is called without arguments.
    """
    override = app.dependency_overrides.get(get_scorer) if app.dependency_overrides else None
    scorer = override() if override is not None else (domain or app.state.primary).scorer
    if scorer is None:
        raise NotReady(NOT_READY)
    return scorer  # type: ignore[no-any-return]


async def get_guard(request: Request) -> ScoringGuard:
    """Admission, deadline and outage policy around the scorer."""
    return request.app.state.guard


SettingsDep = Annotated[Settings, Depends(get_settings)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]
GuardDep = Annotated[ScoringGuard, Depends(get_guard)]
DeadlineDep = Annotated[Deadline, Depends(get_deadline)]
BatchDeadlineDep = Annotated[Deadline, Depends(get_batch_deadline)]
