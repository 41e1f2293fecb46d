"""Explanations: ``GET /v1/{resource}/{id}/explanation`` for every served domain (analyst keys).

What a logged answer was made of: the inputs that moved its raw score most (TreeSHAP over the
package's trees, ``scoring_service.monitoring.explanations``), each in the domain's business
words, with
the entity statuses of the answer. Served by FastAPI like the admin routes: an analyst's call,
not the scoring hot path; the CPU work runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Security

from scoring_service.api.domain_api import field_parts
from scoring_service.core.errors import NotReady
from scoring_service.core.schemas import ErrorResponse
from scoring_service.core.security import KeyScope, require_scope
from scoring_service.served import ServedDomain

TOP_DEFAULT = 5
TOP_MAX = 200

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No API key, or an unknown one."},
    403: {"model": ErrorResponse, "description": "The key is not an analyst key."},
    404: {
        "model": ErrorResponse,
        "description": "answer_not_logged: no logged answer for this id (not scored, not "
        "sampled, or no prediction log).",
    },
    409: {
        "model": ErrorResponse,
        "description": "model_package_invalid: the package that answered cannot be read.",
    },
    422: {"model": ErrorResponse, "description": "The id or `top` is not valid."},
    503: {"model": ErrorResponse, "description": "The service is starting or stopping."},
}

Top = Annotated[
    int,
    Query(ge=1, le=TOP_MAX, description="How many inputs to show, largest contribution first."),
]


def _endpoint(domain: ServedDomain) -> Callable[..., Any]:
    api = domain.api
    business_id = api.business_id

    async def explain(**params: Any) -> dict[str, Any]:
        explainer = domain.explainer
        if explainer is None:
            raise NotReady("The scoring service is starting or stopping; retry in a moment.")
        # Both read files (the parquet log, the package's trees): off the event loop.
        entry = await asyncio.to_thread(explainer.find, params[business_id])
        return await asyncio.to_thread(explainer.explain, entry, params["top"])

    base, constraints, extra = field_parts(api.spec.request_fields[business_id])
    keyword = inspect.Parameter.KEYWORD_ONLY
    explain.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                business_id,
                keyword,
                annotation=Annotated[(base, Path(**constraints), *extra)],  # type: ignore[valid-type]
            ),
            inspect.Parameter("top", keyword, annotation=Top, default=TOP_DEFAULT),
        ]
    )
    return explain


def router(domains: Sequence[ServedDomain]) -> APIRouter:
    """The explanation route of every served domain."""
    # The key check sits on the router, so a route added here later cannot forget it.
    routes = APIRouter(
        tags=["explanations"], dependencies=[Security(require_scope(KeyScope.ANALYST))]
    )
    for domain in domains:
        api = domain.api
        words = api.spec.object_words
        routes.add_api_route(
            api.explanation_path,
            _endpoint(domain),
            methods=["GET"],
            response_model=api.explanation,
            responses=ERRORS,
            name="explain_" + "_".join(words.split()),
            description=f"Why the latest logged answer for this {words} came out as it did: "
            "the inputs that moved its score most (TreeSHAP), in business words, and what the "
            "store knew of each entity.",
        )
    return routes
