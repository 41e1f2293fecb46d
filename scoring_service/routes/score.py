"""Business API: score a transaction, a batch of them, or an entity by its id.

Two halves over the same request and response models:

- ``router``: the routes as FastAPI defines them. They are what ``/openapi.json`` and ``/docs``
  show (``app.py`` documents them), and they stay a working reference implementation; the
  service does not serve them.
- ``serving_routes``: what the service serves at the same paths, pure ASGI endpoints
  (``routes/fast.py``) running the scoring callables below: no dependency injection, no
  response-model round trip, the batch route in columns from the feature read to its JSON.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Path, Security
from starlette.routing import Route

from scoring_service import metrics
from scoring_service.deps import BatchDeadlineDep, DeadlineDep, GuardDep, ScorerDep, SettingsDep
from scoring_service.domain import map_entity, map_records
from scoring_service.errors import BatchTooLarge, InvalidRequest
from scoring_service.features import STATUS_NAMES
from scoring_service.observability import current_request_id
from scoring_service.routes.fast import (
    ScoreCall,
    constrained,
    get_route,
    path_parameter,
    post_route,
)
from scoring_service.schemas import (
    EntityFreshness,
    EntityScoreResponse,
    ErrorResponse,
    IdentifierStr,
    ScoreBatchRequest,
    ScoreBatchResponse,
    ScoreResponse,
    ScoreResult,
    Transaction,
    canonical_ip,
)
from scoring_service.scoring import OFF_LOOP_ROWS, Scored, ScoredColumns
from scoring_service.security import KeyScope, require_scope
from scoring_service.settings import Settings

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


# --- what the service serves: scoring callables behind routes/fast.py ------------------------


def serving_routes(app: FastAPI) -> list[Route]:
    """The score routes as served (pure ASGI), at the paths ``router`` documents."""
    settings: Settings = app.state.settings
    return [
        post_route(app, "/v1/transactions/score", "score", Transaction, answer_transaction),
        post_route(
            app,
            "/v1/transactions/score-batch",
            "score_batch",
            ScoreBatchRequest,
            batch_answerer(settings.max_batch_size),
            batch=True,
        ),
        get_route(
            app,
            "/v1/ip-addresses/{ip_address}/score",
            "score_ip_address",
            path_parameter("ip_address", _ip_address),
            entity_answerer("ip_address", "ip_address"),
        ),
        get_route(
            app,
            "/v1/cards/{card_id}/score",
            "score_card",
            path_parameter("card_id", constrained("card_id", IdentifierStr)),
            entity_answerer("card", "card_id"),
        ),
        get_route(
            app,
            "/v1/merchants/{merchant_id}/score",
            "score_merchant",
            path_parameter("merchant_id", constrained("merchant_id", IdentifierStr)),
            entity_answerer("merchant", "merchant_id"),
        ),
    ]


_ip_text = constrained("ip_address", Annotated[str, Path(max_length=45)])


def _ip_address(value: str) -> str:
    try:
        return canonical_ip(_ip_text(value))
    except ValueError as exc:
        raise InvalidRequest(f"ip_address: {exc}") from None


def _freshness(freshness: dict[str, EntityFreshness]) -> dict[str, dict[str, Any]]:
    return {
        key: {"status": answer.status, "age_seconds": answer.age_seconds}
        for key, answer in freshness.items()
    }


async def answer_transaction(call: ScoreCall[Transaction]) -> dict[str, Any]:
    """POST /v1/transactions/score: a ``ScoreResponse``."""
    transaction, scorer = call.value, call.scorer
    (result,) = await call.score(map_records([transaction], scorer.mapping))
    return {
        "transaction_id": transaction.transaction_id,
        "score": result.score,
        "label": result.label,
        "reasons": result.reasons,
        "model_version": result.model_version or scorer.model.version_label,
        "feature_freshness": _freshness(result.freshness),
        "request_id": current_request_id(),
    }


def entity_answerer(entity: str, join_key: str) -> Any:
    """GET /v1/{entities}/{id}/score: an ``EntityScoreResponse`` for one entity id."""

    async def answer(call: ScoreCall[str]) -> dict[str, Any]:
        entity_id, scorer = call.value, call.scorer
        (result,) = await call.score(map_entity(join_key, entity_id, scorer.mapping))
        return {
            "entity": entity,
            "entity_id": entity_id,
            "score": result.score,
            "label": result.label,
            "reasons": result.reasons,
            "model_version": result.model_version or scorer.model.version_label,
            "feature_freshness": _freshness(result.freshness),
            "request_id": current_request_id(),
        }

    return answer


def batch_answerer(max_batch_size: int) -> Any:
    """POST /v1/transactions/score-batch: a ``ScoreBatchResponse`` as JSON bytes.

    One feature read and one model call for the whole batch, labels as arrays, and the answer
    built from the columns; a large batch builds its JSON off the event loop.
    """

    async def answer(call: ScoreCall[ScoreBatchRequest]) -> bytes:
        transactions = call.value.transactions
        n = len(transactions)
        if n > max_batch_size:
            raise BatchTooLarge(
                f"a batch may hold at most {max_batch_size} transactions, this one has {n}; "
                "split it into smaller calls"
            )
        scorer = call.scorer
        mapped = map_records(transactions, scorer.mapping)
        if scorer.batcher is not None and n < scorer.batcher.max_size:
            # Small enough to share a micro-batch with concurrent calls.
            scored: ScoredColumns | list[Scored] = await call.score(mapped)
        else:
            scored = await call.run(lambda: scorer.score_columns(mapped), n)
        ids = [t.transaction_id for t in transactions]
        version, request_id = scorer.version_label, current_request_id()
        if n > OFF_LOOP_ROWS:
            return await asyncio.to_thread(batch_json, ids, scored, version, request_id)
        return batch_json(ids, scored, version, request_id)

    return answer


def batch_json(
    ids: list[str], scored: ScoredColumns | list[Scored], version: str, request_id: str
) -> bytes:
    """A ``ScoreBatchResponse`` as JSON: rows in request order."""
    scores: list[float] | list[float | None]
    versions: list[str]
    if isinstance(scored, ScoredColumns):
        scores, labels, reasons = scored.scores, scored.labels, scored.reasons
        freshness = scored.freshness(_freshness_json)
        versions = scored.model_versions or [version] * len(ids)
    else:  # answers of the outage policy, or a micro-batch's rows
        scores = [r.score for r in scored]
        labels = [r.label for r in scored]
        reasons = [r.reasons for r in scored]
        freshness = [_freshness(r.freshness) for r in scored]
        versions = [r.model_version or version for r in scored]
    columns = zip(ids, scores, labels, reasons, versions, freshness, strict=True)
    results = [
        {
            "transaction_id": transaction_id,
            "score": score,
            "label": label,
            "reasons": reasons,
            "model_version": row_version or version,
            "feature_freshness": fresh,
        }
        for transaction_id, score, label, reasons, row_version, fresh in columns
    ]
    return orjson.dumps({"results": results, "model_version": version, "request_id": request_id})


def _freshness_json(status: int, age: float | None) -> dict[str, Any]:
    return {"status": STATUS_NAMES[status], "age_seconds": age}
