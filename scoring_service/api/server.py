"""The HTTP server's protocol: uvicorn's httptools protocol with slow clients bounded.

uvicorn has no time limit on a request's headers or body (a client trickling its headers keeps
its connection, a socket and a parser, for as long as it likes), and its ``--limit-concurrency``
counts idle keep-alive connections and answers only once a request's headers are in. This
protocol adds, per process:

- **A cap on open connections** (``SCORING_MAX_CONNECTIONS``): past it a new connection gets a
  fixed 503 ``overloaded`` in the service's error format and is closed at once, before a byte of
  it is read or parsed.
- **Refusals at the limit before they become ASGI calls.** Once a request's headers are in,
  its class (``admission.Classifier``) is checked against the admission limit
  (``Admission.sheds``); a request its class may not take is answered 503 ``overloaded`` from
  here, with no scope, no middleware and no JSON serializer of the app's: under a flood the
  refusals were what spent the event loop. The middleware still decides every request let
  through (per-key quotas included).
- **A time limit for a request's headers** (``SCORING_HEADER_TIMEOUT_S``, from the request's
  first byte, or from the connection's start) **and one for its body** (``SCORING_BODY_TIMEOUT_S``,
  from the end of its headers): past either the connection is closed (a 408
  ``request_timeout`` is written first when no answer has started).

No timer per request: a request only notes when its headers (or body) are due, and one sweep per
process (every ``SWEEP_S``) closes the connections past theirs, so the fast path costs a float
store or two per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httptools
import orjson
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from scoring_service.api.admission import Admission, Classifier
from scoring_service.core import metrics
from scoring_service.core.logs import new_request_id
from scoring_service.core.settings import Settings

SWEEP_S = 0.5
"""How often the open connections are checked against their time limits."""


def _fixed(status: int, body: bytes, retry_after: str) -> Any:
    """An ASGI app answering one fixed JSON document."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"retry-after", retry_after.encode("latin-1")),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _fixed_response(status: str, code: str, message: str, extra: str = "") -> bytes:
    body = orjson.dumps({"code": code, "stage": "service", "message": message, "request_id": None})
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection cap and header and body time limits."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 2048
    retry_after_s: ClassVar[int] = 1
    _sweeping: ClassVar[set[asyncio.AbstractEventLoop]] = set()
    gate: ClassVar[tuple[Admission, Classifier] | None] = None
    """The process's admission state and classifier (``create_app`` registers them)."""

    @classmethod
    def configure(cls, settings: Settings) -> None:
        """Take the limits from the settings (each worker process does, building its app)."""
        cls.header_timeout_s = settings.header_timeout_s
        cls.body_timeout_s = settings.body_timeout_s
        cls.max_connections = settings.max_connections
        cls.retry_after_s = settings.retry_after_s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.due: float | None = None  # when the client must have sent what we wait for
        self.refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self.refused = True
            self.transport = transport
            transport.write(
                _fixed_response(
                    "503 Service Unavailable",
                    "overloaded",
                    f"The service has {self.max_connections} connections open, its limit; "
                    "retry shortly.",
                    f"retry-after: {self.retry_after_s}\r\n",
                )
            )
            transport.close()
            return
        super().connection_made(transport)
        self.due = self.loop.time() + self.header_timeout_s  # the first request's headers
        if self.loop not in self._sweeping:
            self._sweeping.add(self.loop)
            self.loop.call_later(SWEEP_S, self._sweep, self.loop, self.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.due = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.due = self.loop.time() + self.header_timeout_s

    def on_headers_complete(self) -> None:
        self.due = self.loop.time() + self.body_timeout_s
        gate = self.gate
        if gate is not None:
            admission, classify = gate
            path = httptools.parse_url(self.url).path.decode("latin-1")
            priority = classify(self.parser.get_method().decode("latin-1"), path)
            if admission.sheds(priority):
                refusal = admission.overloaded(priority)
                metrics.ERRORS.labels(refusal.code, refusal.stage).inc()
                body = orjson.dumps(
                    {
                        "code": refusal.code,
                        "stage": refusal.stage,
                        "message": refusal.message,
                        "request_id": new_request_id(),
                    }
                )
                app = self.app
                self.app = _fixed(503, body, admission.retry_after)  # this request only
                try:
                    super().on_headers_complete()
                finally:
                    self.app = app
                return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.due = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is None or not self.cycle.more_body:
            # Idle keep-alive from here: uvicorn's own keep-alive timeout closes it. (A body
            # still arriving after an early answer, a refusal, keeps its time limit.)
            self.due = None

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        for connection in list(connections):
            due = getattr(connection, "due", None)
            if due is not None and now > due:
                connection.time_out()
        loop.call_later(SWEEP_S, cls._sweep, loop, connections)

    def time_out(self) -> None:
        """The client was too slow with its headers or body: close its connection."""
        self.due = None
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle  # the request's own, or the one before it while headers arrive
        if cycle is None or cycle.response_complete or not cycle.response_started:
            transport.write(
                _fixed_response(
                    "408 Request Timeout",
                    "request_timeout",
                    "The request's headers or body arrived too slowly; send it whole, promptly.",
                )
            )
        transport.close()
