"""Business API of every served domain: score one object, a batch of them, or an entity by its id.

Built from each domain's declaration (``scoring_service.api.domain_api``), in two halves over the
same
request and answer models:

- ``documented_router``: the routes as FastAPI defines them. They are what ``/openapi.json`` and
  ``/docs`` show (``app.py`` documents them), and they stay a working reference implementation
  over the same scoring callables; the service does not serve them.
- ``serving_routes``: what the service serves at the same paths, pure ASGI endpoints
  (``api/endpoints.py``) running the scoring callables below: no dependency injection, no
  response-model round trip, the batch route in columns from the feature read to its JSON.

Each scoring callable hands the answers it built to the domain's prediction log
(``AnswerLog.record``: a bounded queue, never a wait) before they leave.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Path, Request, Security
from starlette.routing import Route

from scoring_service.api.deps import BatchDeadlineDep, DeadlineDep, GuardDep, live_scorer
from scoring_service.api.domain_api import DomainApi, EntityRoute, field_parts
from scoring_service.api.endpoints import Handler, ScoreCall, get_route, path_parameter, post_route
from scoring_service.core.errors import BatchTooLarge
from scoring_service.core.logs import current_request_id
from scoring_service.core.schemas import EntityFreshness, ErrorResponse
from scoring_service.core.security import KeyScope, require_scope
from scoring_service.core.settings import Settings
from scoring_service.scoring.resilience import Deadline
from scoring_service.served import ServedDomain
from scoring_service.stages.features import STATUS_NAMES
from scoring_service.stages.mapping import MappedRequests, map_entity, map_records
from scoring_service.stages.outcomes import OFF_LOOP_ROWS, Scored, ScoredColumns


def errors_of(api: DomainApi) -> dict[int | str, dict[str, Any]]:
    """The refusals of a domain's score routes, for the documentation."""
    return {
        401: {"model": ErrorResponse, "description": "No API key, or an unknown one."},
        403: {"model": ErrorResponse, "description": "The key may not call scoring routes."},
        413: {"model": ErrorResponse, "description": "Body or batch larger than allowed."},
        422: {
            "model": ErrorResponse,
            "description": f"invalid_request: the request is not a valid "
            f"{api.spec.object_words} (the message names the field or header); "
            "entity_mapping_failed: the model reads a field the request cannot have.",
        },
        503: {
            "model": ErrorResponse,
            "description": "feature_store_unavailable (outage policy `fail`), model_unavailable, "
            "overloaded or not_ready; Retry-After says when to try again.",
        },
    }


# --- the scoring callables -------------------------------------------------------------------


def _freshness(freshness: dict[str, EntityFreshness]) -> dict[str, dict[str, Any]]:
    return {
        key: {"status": answer.status, "age_seconds": answer.age_seconds}
        for key, answer in freshness.items()
    }


def _arrived(deadline: Deadline) -> float:
    """When the call arrived (time.monotonic()): its deadline less its budget."""
    return deadline.expires_at - deadline.budget_ms / 1000


async def _record(
    domain: ServedDomain,
    call: ScoreCall[Any],
    ids: Sequence[str | None],
    mapped: MappedRequests,
    scored: ScoredColumns | list[Scored],
) -> None:
    """Hand the call's answers to the domain's prediction log, when it keeps one."""
    answers = domain.answers
    if answers is None:
        return
    scorer = call.scorer
    options: dict[str, Any] = {
        "default_version": scorer.model.version_label,
        "feature_names": scorer.model.manifest.features,
        "arrived": _arrived(call.deadline),
    }
    if isinstance(scored, ScoredColumns):
        await answers.record_columns(current_request_id(), ids, mapped, scored, **options)
    else:
        await answers.record(current_request_id(), ids, mapped, scored, **options)


def _answer(result: Any, scorer: Any) -> dict[str, Any]:
    """The fields every one-object answer has, after the ones naming the object."""
    return {
        "score": result.score,
        "label": result.label,
        "reasons": result.reasons,
        "model_version": result.model_version or scorer.model.version_label,
        "variant": result.variant,
        "feature_freshness": _freshness(result.freshness),
        "request_id": current_request_id(),
    }


def answer_one(domain: ServedDomain) -> Handler[Any]:
    """POST /v1/{resource}/score: the domain's score response for one object."""
    business_id = domain.api.business_id

    async def answer(call: ScoreCall[Any]) -> dict[str, Any]:
        value, scorer = call.value, call.scorer
        mapped = map_records([value], scorer.mapping)
        scored = await call.score(mapped)
        (result,) = scored
        key = getattr(value, business_id)
        body = {business_id: key, **_answer(result, scorer)}
        await _record(domain, call, [key], mapped, scored)
        return body

    return answer


def answer_entity(domain: ServedDomain, route: EntityRoute) -> Handler[Any]:
    """GET /v1/{entities}/{id}/score: the domain's entity score response for one entity id."""
    join_key = route.entity.join_key

    async def answer(call: ScoreCall[str]) -> dict[str, Any]:
        entity_id, scorer = call.value, call.scorer
        mapped = map_entity(join_key, entity_id, scorer.mapping)
        scored = await call.score(mapped)
        (result,) = scored
        body = {"entity": route.entity_name, "entity_id": entity_id, **_answer(result, scorer)}
        await _record(domain, call, [None], mapped, scored)  # no business object to explain
        return body

    return answer


def answer_batch(domain: ServedDomain, max_batch_size: int) -> Handler[Any]:
    """POST /v1/{resource}/score-batch: the domain's batch response as JSON bytes.

    One feature read and one model call for the whole batch, labels as arrays, and the answer
    built from the columns; a large batch builds its JSON off the event loop.
    """
    api = domain.api
    business_id, collection, words = api.business_id, api.collection, api.spec.object_words

    async def answer(call: ScoreCall[Any]) -> bytes:
        objects = getattr(call.value, collection)
        n = len(objects)
        if n > max_batch_size:
            raise BatchTooLarge(
                f"A batch may hold at most {max_batch_size} {words}s, this one has {n}; "
                "split it into smaller calls."
            )
        scorer = call.scorer
        mapped = map_records(objects, scorer.mapping)
        if scorer.batcher is not None and n < scorer.batcher.max_size:
            # Small enough to share a micro-batch with concurrent calls.
            scored: ScoredColumns | list[Scored] = await call.score(mapped)
        else:
            scored = await call.run(lambda: scorer.score_columns(mapped), n)
        ids = list(map(attrgetter(business_id), objects))
        version, request_id = scorer.version_label, current_request_id()
        if n > OFF_LOOP_ROWS:
            body = await asyncio.to_thread(
                batch_json, ids, scored, version, request_id, business_id
            )
        else:
            body = batch_json(ids, scored, version, request_id, business_id)
        await _record(domain, call, ids, mapped, scored)
        return body

    return answer


def batch_json(
    ids: list[str],
    scored: ScoredColumns | list[Scored],
    version: str,
    request_id: str,
    business_id: str,
) -> bytes:
    """A batch response as JSON: rows in request order, each under the business id's name."""
    n = len(ids)
    scores: list[float] | list[float | None]
    if isinstance(scored, ScoredColumns):
        scores, labels, reasons = scored.scores, scored.labels, scored.reasons
        freshness = scored.freshness(_freshness_json)
        variants = scored.variants or ["champion"] * n
        versions = scored.model_versions or [version] * n
    else:  # answers of the outage policy, or a micro-batch's rows
        scores = [r.score for r in scored]
        labels = [r.label for r in scored]
        reasons = [r.reasons for r in scored]
        freshness = [_freshness(r.freshness) for r in scored]
        variants = [r.variant for r in scored]
        versions = [r.model_version or version for r in scored]
    columns = zip(ids, scores, labels, reasons, versions, variants, freshness, strict=True)
    results = [
        {
            business_id: key,
            "score": score,
            "label": label,
            "reasons": why,
            "model_version": row_version or version,
            "variant": variant,
            "feature_freshness": fresh,
        }
        for key, score, label, why, row_version, variant, fresh in columns
    ]
    return orjson.dumps({"results": results, "model_version": version, "request_id": request_id})


def _freshness_json(status: int, age: float | None) -> dict[str, Any]:
    return {"status": STATUS_NAMES[status], "age_seconds": age}


# --- what the service serves: scoring callables behind api/endpoints.py ------------------------


def serving_routes(app: FastAPI, domains: Sequence[ServedDomain]) -> list[Route]:
    """The score routes of every domain as served (pure ASGI), at the paths the documented
    routes show."""
    settings: Settings = app.state.settings
    routes = []
    for domain in domains:
        api = domain.api
        routes.append(
            post_route(app, api.score_path, "score", api.request, answer_one(domain), domain=domain)
        )
        routes.append(
            post_route(
                app,
                api.batch_path,
                "score_batch",
                api.batch_request,
                answer_batch(domain, settings.max_batch_size),
                batch=True,
                domain=domain,
            )
        )
        for entity in api.entity_routes:
            routes.append(
                get_route(
                    app,
                    entity.path,
                    entity.name,
                    path_parameter(entity.field, entity.parse),
                    answer_entity(domain, entity),
                    domain=domain,
                )
            )
    return routes


# --- what the documentation shows: the same callables as FastAPI routes ----------------------


def _reference(
    domain: ServedDomain,
    handler: Handler[Any],
    value: inspect.Parameter,
    deadline: Any,
) -> Callable[..., Any]:
    """A FastAPI endpoint over a scoring callable: its signature (the request body or path
    value, the guard and the deadline with its header) is what FastAPI reads and documents."""

    async def endpoint(**params: Any) -> Any:
        request: Request = params["request"]
        call = ScoreCall(
            params[value.name],
            live_scorer(request.app, domain),
            params["guard"],
            params["deadline"],
            holds_slot=False,
        )
        answer = await handler(call)
        return orjson.loads(answer) if isinstance(answer, bytes) else answer

    keyword = inspect.Parameter.KEYWORD_ONLY
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("request", keyword, annotation=Request),
            value,
            inspect.Parameter("guard", keyword, annotation=GuardDep),
            inspect.Parameter("deadline", keyword, annotation=deadline),
        ]
    )
    return endpoint


def documented_router(domains: Sequence[ServedDomain], max_batch_size: int) -> APIRouter:
    """Every domain's score routes as FastAPI defines them (for /openapi.json and /docs)."""
    # The key check sits on the router, so a route added here later cannot forget it.
    router = APIRouter(tags=["scoring"], dependencies=[Security(require_scope(KeyScope.SCORE))])
    keyword = inspect.Parameter.KEYWORD_ONLY
    for domain in domains:
        api = domain.api
        words = api.spec.object_words
        errors = errors_of(api)
        router.add_api_route(
            api.score_path,
            _reference(
                domain,
                answer_one(domain),
                inspect.Parameter("body", keyword, annotation=api.request),
                DeadlineDep,
            ),
            methods=["POST"],
            response_model=api.response,
            responses=errors,
            name=api.score_route,
            description=f"Score one {words}: its score, business label and reasons.",
        )
        router.add_api_route(
            api.batch_path,
            _reference(
                domain,
                answer_batch(domain, max_batch_size),
                inspect.Parameter("body", keyword, annotation=api.batch_request),
                BatchDeadlineDep,
            ),
            methods=["POST"],
            response_model=api.batch_response,
            responses=errors,
            name="score_batch",
            description=f"Score up to `max_batch_size` {api.spec.resource.replace('-', ' ')} "
            "with one feature read and one model call.",
        )
        for entity in api.entity_routes:
            base, constraints, extra = field_parts(api.spec.request_fields[entity.field])
            path_type = Annotated[(base, Path(**constraints), *extra)]  # type: ignore[valid-type]
            router.add_api_route(
                entity.path,
                _reference(
                    domain,
                    answer_entity(domain, entity),
                    inspect.Parameter(entity.field, keyword, annotation=path_type),
                    DeadlineDep,
                ),
                methods=["GET"],
                response_model=api.entity_response,
                responses=errors,
                name=entity.name,
                description=_entity_description(api, entity),
            )
    return router


def _entity_description(api: DomainApi, entity: EntityRoute) -> str:
    what = entity.entity_name.replace("_", " ")
    about = entity.entity.description.rstrip(".")
    named = f"{what} ({about})" if about else what
    words = api.spec.object_words
    return f"Risk of a typical {words} of this {named}, from what the store knows of it."
