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
  here: its bytes are written straight to the socket, with no scope, no request cycle, no
  task, no middleware and no serializer of the app's (under a flood the refusals were what
  spent the event loop), and what is left of its body is read and dropped so the connection
  serves the next request. The middleware still decides every request let through (per-key
  quotas included).
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
import time
from typing import Any, ClassVar

import httptools
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from scoring_service.api.admission import ADMITTED_KEY, Admission, Classifier, Priority, Waiter
from scoring_service.core import metrics
from scoring_service.core.logs import new_request_id
from scoring_service.core.security import ARRIVED_AT
from scoring_service.core.settings import Settings

SWEEP_S = 0.5
"""How often the open connections are checked against their time limits."""

TICK_S = 0.005
"""How often, while requests wait for a slot, the ones whose wait ran out are refused."""

_DEADLINE_HEADER = b"x-deadline-ms"


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


def _overloaded_body(admission: Admission, priority: Priority) -> bytes:
    """The error envelope of a 503 ``overloaded`` refusal at admission, counted."""
    refusal = admission.overloaded(priority)
    metrics.ERRORS.labels(refusal.code, refusal.stage).inc()
    return orjson.dumps(
        {
            "code": refusal.code,
            "stage": refusal.stage,
            "message": refusal.message,
            "request_id": new_request_id(),
        }
    )


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

    deadline_s: ClassVar[float] = 0.05
    batch_deadline_s: ClassVar[float] = 2.0
    _ticking: ClassVar[set[asyncio.AbstractEventLoop]] = set()

    @classmethod
    def configure(cls, settings: Settings) -> None:
        """Take the limits from the settings (each worker process does, building its app)."""
        cls.header_timeout_s = settings.header_timeout_s
        cls.body_timeout_s = settings.body_timeout_s
        cls.max_connections = settings.max_connections
        cls.retry_after_s = settings.retry_after_s
        cls.deadline_s = settings.deadline_ms / 1000
        cls.batch_deadline_s = settings.batch_deadline_ms / 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.due: float | None = None  # when the client must have sent what we wait for
        self.refused = False
        self.discarding = False  # the body of a request refused before it was read
        self.wait: tuple[Admission, Priority, float] | None = None  # this request waits

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
        # Deadlines count from here, a wait for a slot included.
        self.scope[ARRIVED_AT] = time.monotonic()  # type: ignore[literal-required]
        gate = self.gate
        if gate is not None:
            admission, classify = gate
            path = httptools.parse_url(self.url).path.decode("latin-1")
            priority = classify(self.parser.get_method().decode("latin-1"), path)
            if admission.sheds(priority):
                pipelined = self.cycle is not None and not self.cycle.response_complete
                budget = admission.wait_budget(self._deadline_s(priority))
                if budget > 0 and not pipelined:
                    self.wait = (admission, priority, budget)
                    try:
                        super().on_headers_complete()  # the cycle, held by _start_asgi_task
                    finally:
                        self.wait = None
                    return
                body = _overloaded_body(admission, priority)
                if not pipelined and self.parser.get_method() != b"HEAD":
                    self._refuse(body, admission.retry_after)
                    return
                # Behind a pipelined answer still being written, or a HEAD: through a cycle
                # of uvicorn's, which keeps the answers in order and a HEAD bodiless.
                app = self.app
                self.app = _fixed(503, body, admission.retry_after)  # this request only
                try:
                    super().on_headers_complete()
                finally:
                    self.app = app
                return
        super().on_headers_complete()

    def _deadline_s(self, priority: Priority) -> float:
        """The request's deadline in seconds: ``X-Deadline-Ms`` when it asks a shorter one."""
        budget = self.batch_deadline_s if priority is Priority.BATCH else self.deadline_s
        for name, value in self.headers:
            if name == _DEADLINE_HEADER:
                try:
                    return min(budget, int(value) / 1000)
                except ValueError:
                    break  # the endpoint refuses it with the reason
        return budget

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        wait = self.wait
        if wait is None:
            super()._start_asgi_task(cycle, app)
            return
        self.wait = None
        admission, priority, budget = wait
        admission.enqueue(
            Waiter(
                priority,
                time.monotonic() + budget,
                lambda: self._start_waited(admission, cycle, app),
                lambda: self._refuse_waited(admission, priority, cycle),
            )
        )
        if self.loop not in self._ticking:
            self._ticking.add(self.loop)
            self.loop.call_later(TICK_S, self._tick, self.loop, admission)

    def _start_waited(
        self, admission: Admission, cycle: RequestResponseCycle, app: ASGIApp
    ) -> bool:
        """Give a waiting request its slot: its task starts, counted in flight until it ends."""
        if cycle.disconnected or self.transport.is_closing():
            return False
        cycle.scope[ADMITTED_KEY] = True  # type: ignore[literal-required]
        task = self.loop.create_task(cycle.run_asgi(app))  # type: ignore[arg-type]
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda _: admission.finished())
        self.tasks.add(task)
        return True

    def _refuse_waited(
        self, admission: Admission, priority: Priority, cycle: RequestResponseCycle
    ) -> None:
        """A waiting request's wait ran out (or newer ones pushed it out): 503, written here."""
        if cycle.disconnected or self.transport.is_closing():
            return
        body = _overloaded_body(admission, priority)
        self.transport.write(self._refusal_bytes(body, admission.retry_after, cycle.keep_alive))
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        if cycle.keep_alive:
            self.on_response_complete()
        else:
            self.transport.close()

    @classmethod
    def _tick(cls, loop: asyncio.AbstractEventLoop, admission: Admission) -> None:
        admission.expire(time.monotonic())
        if admission.waiting:
            loop.call_later(TICK_S, cls._tick, loop, admission)
        else:
            cls._ticking.discard(loop)

    def _refusal_bytes(self, body: bytes, retry_after: str, keep_alive: bool) -> bytes:
        head = [b"HTTP/1.1 503 Service Unavailable\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\ncontent-length: %d\r\nretry-after: %s\r\n"
            % (len(body), retry_after.encode("latin-1")),
            b"\r\n" if keep_alive else b"connection: close\r\n\r\n",
            body,
        ]
        return b"".join(head)

    def _refuse(self, body: bytes, retry_after: str) -> None:
        """Answer this request 503 from here: its bytes written straight to the socket, no
        request cycle, no task. What is left of its body is read and dropped
        (``on_body``), and the connection is kept for the next request."""
        keep_alive = self.parser.should_keep_alive() and self.parser.get_http_version() != "1.0"
        self.transport.write(self._refusal_bytes(body, retry_after, keep_alive))
        self.discarding = True
        if not keep_alive:
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        if self.discarding:
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.due = None
        if self.discarding:  # a request answered by ``_refuse``, now read whole
            self.discarding = False
            self.on_response_complete()
            return
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
        if self.discarding:
            pass  # refused and answered already; its body was too slow to be read out
        elif cycle is None or cycle.response_complete or not cycle.response_started:
            transport.write(
                _fixed_response(
                    "408 Request Timeout",
                    "request_timeout",
                    "The request's headers or body arrived too slowly; send it whole, promptly.",
                )
            )
        transport.close()
