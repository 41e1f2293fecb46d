"""How the score routes are served: pure ASGI endpoints, without FastAPI's per-request machinery.

A FastAPI route resolves its dependency graph, builds a ``Request``, reads and validates the body
through it and validates and serializes a response model on every call: under load that was
about half of the event loop's busy time, more than the scoring itself (``docs/performance.md``).
A score route served from here does the same work directly, in this order:

1. arrival: the deadline counts from the time ``RequestLimitsMiddleware`` stamped;
2. the API key, from the headers (401 / 403, ``security.check_key``);
3. admission: past ``max_in_flight`` calls, 503 ``overloaded`` at once, before one byte of the
   body is read (``ScoringGuard.admit``);
4. ``X-Deadline-Ms`` may shorten the deadline;
5. the body (or path parameter) is validated by the request model's compiled pydantic-core
   validator, ``validate_json`` on the raw bytes (large bodies in a worker thread);
6. the route's scoring callable gets a ``ScoreCall`` and returns a JSON-able answer (or bytes);
7. the answer leaves as orjson bytes.

``ScoringApp`` answers these routes before FastAPI's own layers (its telemetry, body-limit,
exception and exit-stack middlewares and its router): a score request passes the app's own
middlewares (``user_middleware``: request id, body limits) and its endpoint, nothing else. Any
other request, or a score path with another method, goes through the whole FastAPI app.

Refusals leave in the one error envelope (``errors.response_for``); an unexpected exception
leaves as a 500 ``internal_error`` with a generic message, logged with the request id. The
endpoints are generic: a route is a request model (or a path parameter parser) plus a scoring
callable, so routes built from a domain's specification get the same path. Their documentation
still comes from FastAPI route definitions (``routes/score.py``), which serve ``/openapi.json``
and ``/docs`` only; ``tests/scoring_service/api/test_openapi.py`` keeps it equal to what clients
were given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

import orjson
from fastapi import FastAPI
from pydantic import Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scoring_service.api.deps import live_scorer
from scoring_service.core import metrics
from scoring_service.core.errors import (
    UNEXPECTED_MESSAGE,
    BatchTooLarge,
    InvalidRequest,
    Overloaded,
    ScoringError,
    error_response,
    response_for,
    validation_message,
)
from scoring_service.core.security import API_KEY_HEADER, ARRIVED_AT, KeyScope, check_key
from scoring_service.core.settings import Settings
from scoring_service.scoring.resilience import DEADLINE_HEADER, Deadline, ScoringGuard
from scoring_service.scoring.scorer import Scorer
from scoring_service.stages.mapping import MappedRequests
from scoring_service.stages.outcomes import Scored

if TYPE_CHECKING:
    from scoring_service.served import ServedDomain

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

OFF_LOOP_BODY_BYTES = 256 * 1024
"""Bodies at least this large are validated in a worker thread, so the event loop keeps
answering other calls meanwhile (a 10,000-row batch is about 2 MB)."""

_KEY_HEADER = API_KEY_HEADER.lower().encode("latin-1")
_DEADLINE_HEADER = DEADLINE_HEADER.lower().encode("latin-1")
_DEADLINE_MS = TypeAdapter(Annotated[int, Field(ge=1, le=600_000)])


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""


@dataclass(slots=True)
class ScoreCall(Generic[T]):
    """What a scoring callable gets: its validated input and the means to score it in time."""

    value: T
    scorer: Scorer
    guard: ScoringGuard
    deadline: Deadline
    holds_slot: bool
    """Whether this call took an in-flight slot at arrival (the guard then takes none)."""

    async def score(self, mapped: MappedRequests) -> list[Scored]:
        """Score mapped requests within the deadline, or the outage policy's answer."""
        return await self.guard.score(
            self.scorer, mapped, self.deadline, holds_slot=self.holds_slot
        )

    async def run(self, work: Callable[[], Awaitable[R]], n: int) -> R | list[Scored]:
        """Any scoring work on n requests under the same guard (deadline, outage policy)."""
        return await self.guard.run(work, n, self.deadline, holds_slot=self.holds_slot)


Parser = Callable[[Scope, bytes], T]
"""Builds a route's input from the scope (path parameters) and the body; InvalidRequest when
it cannot."""
Handler = Callable[[ScoreCall[T]], Awaitable[Any]]
"""A scoring callable: the answer as a JSON-able object, or as JSON bytes already."""


def json_body(model: Any, batch: bool = False) -> Parser[Any]:
    """A parser validating the raw body with ``model``'s compiled validator (JSON mode).

    For a batch route, a list of objects longer than the schema's bound is refused like any
    batch over the limit (413 ``batch_too_large``), not as a malformed request.
    """
    adapter = TypeAdapter(model)

    def parse(_: Scope, body: bytes) -> Any:
        try:
            return adapter.validate_json(body)
        except ValidationError as exc:
            errors = exc.errors()
            if batch:
                for error in errors:
                    if error["type"] == "too_long" and len(error["loc"]) == 1:
                        limit = (error.get("ctx") or {}).get("max_length")
                        items = error["input"]
                        raise BatchTooLarge(
                            f"A batch may hold at most {limit} {error['loc'][0]}, this one has "
                            f"{len(items) if isinstance(items, list) else 'more'}; "
                            "split it into smaller calls."
                        ) from None
            raise InvalidRequest(validation_message(errors)) from None

    return parse


def path_parameter(name: str, convert: Callable[[str], T]) -> Parser[T]:
    """A parser of one path parameter; ``convert`` raises InvalidRequest for a bad value."""

    def parse(scope: Scope, _: bytes) -> T:
        return convert(scope["path_params"][name])

    return parse


class ScoreEndpoint(Generic[T]):
    """One score route as a raw ASGI app (see the module docstring for the order of work)."""

    def __init__(
        self,
        app: FastAPI,
        route: str,
        parse: Parser[T],
        handler: Handler[T],
        *,
        reads_body: bool,
        batch: bool = False,
        domain: ServedDomain | None = None,
    ) -> None:
        settings: Settings = app.state.settings
        self.app = app
        self.parse = parse
        self.handler = handler
        self.reads_body = reads_body
        self.domain = domain
        self.budget_ms = settings.batch_deadline_ms if batch else settings.deadline_ms
        # The child, looked up once.
        self.seconds = metrics.REQUEST_SECONDS.labels(route, domain.name if domain else "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = scope.get(ARRIVED_AT) or time.monotonic()
        key: str | None = None
        asked: bytes | None = None
        for name, value in scope["headers"]:
            if name == _KEY_HEADER:
                key = value.decode("latin-1")
            elif name == _DEADLINE_HEADER:
                asked = value
        state = self.app.state
        guard: ScoringGuard = state.guard
        try:
            check_key(state.keyring, key, KeyScope.SCORE)
            holds_slot = guard.admit()  # refused here, before the body is read
            try:
                scorer = live_scorer(self.app, self.domain)
                deadline = self._deadline(arrived, asked)
                value = await self._input(scope, receive)
                with self.seconds.time():
                    answer = await self.handler(
                        ScoreCall(value, scorer, guard, deadline, holds_slot)
                    )
            finally:
                if holds_slot:
                    guard.release()
        except _Disconnected:
            return
        except ScoringError as exc:
            # Refusals of overload are counted, not logged one by one: an overload would
            # otherwise become a flood of log lines too.
            if exc.status_code >= 500 and not isinstance(exc, Overloaded):
                logger.warning(
                    "%s at %s: %s", exc.code, exc.stage, exc.message, exc_info=exc.__cause__
                )
            await response_for(exc)(scope, receive, send)
            return
        except HTTPException:
            raise  # e.g. a body past the limit: answered by the middleware that raised it
        except Exception as exc:
            # Served before FastAPI's error middleware: the generic answer is given here.
            logger.error("unexpected error", exc_info=exc)
            await error_response(500, "internal_error", "service", UNEXPECTED_MESSAGE)(
                scope, receive, send
            )
            return
        body = answer if isinstance(answer, bytes) else orjson.dumps(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _deadline(self, arrived: float, asked: bytes | None) -> Deadline:
        budget = self.budget_ms
        if asked is not None:
            try:
                budget = min(budget, _DEADLINE_MS.validate_python(asked.decode("latin-1")))
            except ValidationError as exc:
                errors = [{**e, "loc": (DEADLINE_HEADER, *e["loc"])} for e in exc.errors()]
                raise InvalidRequest(validation_message(errors)) from None
        return Deadline(expires_at=arrived + budget / 1000, budget_ms=budget)

    async def _input(self, scope: Scope, receive: Receive) -> T:
        if not self.reads_body:
            return self.parse(scope, b"")
        body = await read_body(receive)
        if len(body) >= OFF_LOOP_BODY_BYTES:
            return await asyncio.to_thread(self.parse, scope, body)
        return self.parse(scope, body)


async def read_body(receive: Receive) -> bytes:
    """The whole request body (the body-limit middleware counts it as it arrives)."""
    message: Message = await receive()
    if message["type"] == "http.disconnect":
        raise _Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the usual case: one message
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def post_route(
    app: FastAPI,
    path: str,
    route: str,
    model: Any,
    handler: Handler[Any],
    *,
    batch: bool = False,
    domain: ServedDomain | None = None,
) -> Route:
    """A POST score route of a domain (default: the primary one): a JSON body of ``model`` and
    a scoring callable."""
    endpoint = ScoreEndpoint(
        app, route, json_body(model, batch), handler, reads_body=True, batch=batch, domain=domain
    )
    return Route(path, endpoint, methods=["POST"], name=route, include_in_schema=False)


def get_route(
    app: FastAPI,
    path: str,
    route: str,
    parse: Parser[Any],
    handler: Handler[Any],
    *,
    domain: ServedDomain | None = None,
) -> Route:
    """A GET score route of a domain (default: the primary one): a path parameter and a
    scoring callable."""
    endpoint = ScoreEndpoint(app, route, parse, handler, reads_body=False, domain=domain)
    return Route(path, endpoint, methods=["GET"], name=route, include_in_schema=False)


class ScoringApp(FastAPI):
    """FastAPI, with its score routes (``ScoreEndpoint`` routes of ``app.routes``) answered
    ahead of FastAPI's own layers, through the app's own middlewares only.

    FastAPI's native OpenTelemetry is off by default: the service exports Prometheus metrics,
    and the check for configured providers ran on every request.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("telemetry", {"tracing": False, "metrics": False, "logs": False})
        super().__init__(**kwargs)
        self._fast: _FastRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            fast = self._fast
            if fast is None:
                fast = self._fast = _FastRoutes(self)
            target = fast.match(scope)
            if target is not None:
                scope["app"] = self
                await target(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _FastRoutes:
    """The score routes of an app by method and path, each behind the app's own middlewares
    (built on the first request, when every route is mounted)."""

    def __init__(self, app: FastAPI) -> None:
        routes = [r for r in app.router.routes if isinstance(r, Route)]
        scored = [r for r in routes if isinstance(r.app, ScoreEndpoint)]
        self.exact: dict[tuple[str, str], ASGIApp] = {}
        self.templated: list[tuple[Route, ASGIApp]] = []
        for route in scored:
            wrapped = _with_middleware(app, route.app)
            if route.param_convertors:
                self.templated.append((route, wrapped))
            else:
                for method in route.methods or ():
                    self.exact[(method, route.path)] = wrapped

    def match(self, scope: Scope) -> ASGIApp | None:
        """The wrapped endpoint for this request, or None (the full app answers it)."""
        target = self.exact.get((scope["method"], scope["path"]))
        if target is not None:
            return target
        for route, wrapped in self.templated:
            match, child = route.matches(scope)
            if match is Match.FULL:
                scope.update(child)
                return wrapped
        return None


def _with_middleware(app: FastAPI, endpoint: ASGIApp) -> ASGIApp:
    """``endpoint`` inside the app's own middlewares, in the order the app applies them."""
    wrapped = endpoint
    for middleware in reversed(app.user_middleware):
        wrapped = middleware.cls(wrapped, *middleware.args, **middleware.kwargs)  # type: ignore[call-arg]
    return wrapped
