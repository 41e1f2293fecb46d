"""Business API: score a transaction, a batch of them, or an entity by its id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Security

from scoring_service import metrics
from scoring_service.deps import BatchDeadlineDep, DeadlineDep, GuardDep, ScorerDep, SettingsDep
from scoring_service.domain import map_entity, map_records
from scoring_service.errors import BatchTooLarge, InvalidRequest
from scoring_service.observability import current_request_id
from scoring_service.schemas import (
    EntityScoreResponse,
    ErrorResponse,
    ScoreBatchRequest,
    ScoreBatchResponse,
    ScoreResponse,
    ScoreResult,
    Transaction,
    canonical_ip,
)
from scoring_service.security import KeyScope, require_scope

# The key check sits on the router, so a route added here later cannot forget it.
router = APIRouter(
    prefix="/v1", tags=["scoring"], dependencies=[Security(require_scope(KeyScope.SCORE))]
)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No API key, or an unknown one."},
    403: {"model": ErrorResponse, "description": "The key may not call scoring routes."},
    413: {"model": ErrorResponse, "description": "Body or batch larger than allowed."},
    422: {"model": ErrorResponse, "description": "The request is not a valid transaction."},
    503: {
        "model": ErrorResponse,
        "description": "feature_store_unavailable (outage policy `fail`), model_unavailable, "
        "overloaded or not_ready; Retry-After says when to try again.",
    },
}
ENTITY_ID = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")
]


@router.post("/transactions/score", response_model=ScoreResponse, responses=ERRORS)
async def score_transaction(
    transaction: Transaction, scorer: ScorerDep, guard: GuardDep, deadline: DeadlineDep
) -> ScoreResponse:
    """Score one transaction: fraud probability, business label and reasons."""
    with metrics.REQUEST_SECONDS.labels("score").time():
        mapped = map_records([transaction], scorer.model.manifest)
        (result,) = await guard.score(scorer, mapped, deadline)
    return ScoreResponse(
        transaction_id=transaction.transaction_id,
        score=result.score,
        label=result.label,  # type: ignore[arg-type]
        reasons=result.reasons,
        model_version=scorer.model.version_label,
        feature_freshness=result.freshness,
        request_id=current_request_id(),
    )


@router.post("/transactions/score-batch", response_model=ScoreBatchResponse, responses=ERRORS)
async def score_batch(
    body: ScoreBatchRequest,
    scorer: ScorerDep,
    settings: SettingsDep,
    guard: GuardDep,
    deadline: BatchDeadlineDep,
) -> ScoreBatchResponse:
    """Score up to `max_batch_size` transactions with one feature read and one model call."""
    if len(body.transactions) > settings.max_batch_size:
        raise BatchTooLarge(
            f"a batch may hold at most {settings.max_batch_size} transactions, this one has "
            f"{len(body.transactions)}; split it into smaller calls"
        )
    with metrics.REQUEST_SECONDS.labels("score_batch").time():
        mapped = map_records(body.transactions, scorer.model.manifest)
        results = await guard.score(scorer, mapped, deadline)
    version = scorer.model.version_label
    return ScoreBatchResponse(
        results=[
            ScoreResult(
                transaction_id=t.transaction_id,
                score=r.score,
                label=r.label,  # type: ignore[arg-type]
                reasons=r.reasons,
                model_version=version,
                feature_freshness=r.freshness,
            )
            for t, r in zip(body.transactions, results, strict=True)
        ],
        model_version=version,
        request_id=current_request_id(),
    )


async def _score_entity(
    scorer: ScorerDep,
    guard: GuardDep,
    deadline: DeadlineDep,
    entity: str,
    join_key: str,
    entity_id: str,
) -> EntityScoreResponse:
    manifest = scorer.model.manifest
    with metrics.REQUEST_SECONDS.labels(f"score_{entity}").time():
        mapped = map_entity(join_key, entity_id, manifest)
        (result,) = await guard.score(scorer, mapped, deadline)
    return EntityScoreResponse(
        entity=entity,
        entity_id=entity_id,
        score=result.score,
        label=result.label,  # type: ignore[arg-type]
        reasons=result.reasons,
        model_version=scorer.model.version_label,
        feature_freshness=result.freshness,
        request_id=current_request_id(),
    )


@router.get(
    "/ip-addresses/{ip_address}/score", response_model=EntityScoreResponse, responses=ERRORS
)
async def score_ip_address(
    ip_address: Annotated[str, Path(max_length=45)],
    scorer: ScorerDep,
    guard: GuardDep,
    deadline: DeadlineDep,
) -> EntityScoreResponse:
    """Risk of a typical payment from this IP address, from what the store knows of it."""
    try:
        canonical = canonical_ip(ip_address)
    except ValueError as exc:
        raise InvalidRequest(f"ip_address: {exc}") from None
    return await _score_entity(scorer, guard, deadline, "ip_address", "ip_address", canonical)


@router.get("/cards/{card_id}/score", response_model=EntityScoreResponse, responses=ERRORS)
async def score_card(
    card_id: ENTITY_ID, scorer: ScorerDep, guard: GuardDep, deadline: DeadlineDep
) -> EntityScoreResponse:
    """Risk of a typical payment with this card."""
    return await _score_entity(scorer, guard, deadline, "card", "card_id", card_id)


@router.get("/merchants/{merchant_id}/score", response_model=EntityScoreResponse, responses=ERRORS)
async def score_merchant(
    merchant_id: ENTITY_ID, scorer: ScorerDep, guard: GuardDep, deadline: DeadlineDep
) -> EntityScoreResponse:
    """Risk of a typical payment to this merchant."""
    return await _score_entity(scorer, guard, deadline, "merchant", "merchant_id", merchant_id)
