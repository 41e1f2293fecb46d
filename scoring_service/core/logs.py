"""Request ids and logging: an id per request, in the response header and every log line."""

from __future__ import annotations

import atexit
import contextvars
import itertools
import logging
import logging.handlers
import os
import re
import secrets
import signal
import threading
from queue import Queue
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def current_request_id() -> str:
    """The id of the request being handled ("-" outside a request)."""
    return request_id_var.get()


# Request ids: a random prefix per process and a counter, 32 hex characters like a uuid4's hex,
# unique across processes without a call to the OS's random source per request.
_id_prefix = secrets.token_hex(8)
_id_counter = itertools.count()


def _new_id_prefix() -> None:
    global _id_prefix
    _id_prefix = secrets.token_hex(8)


os.register_at_fork(after_in_child=_new_id_prefix)  # forked workers must not share a prefix


def new_request_id() -> str:
    """A new request id, unique across this service's processes."""
    return f"{_id_prefix}{next(_id_counter):016x}"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


_listener: logging.handlers.QueueListener | None = None
_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "info") -> None:
    """Configure the root logger once: one line per record, with the request id.

    Records are written by a background thread (``QueueHandler`` -> ``QueueListener``): a log
    call on the event loop only puts the record on a queue, it never waits for stderr (a pipe a
    slow reader can fill, a terminal, a container runtime). The request id is read from the
    context when the record is made, in the caller's thread.
    """
    root = logging.getLogger()
    root.handlers[:] = [queue_handler()]
    root.setLevel(level.upper())


def log_config(level: str = "info") -> dict[str, Any]:
    """``configure_logging`` as a ``logging.config.dictConfig`` document, for uvicorn's
    ``log_config``: uvicorn applies it in every worker process it starts, before it serves."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"queue": {"()": f"{__name__}.queue_handler"}},
        "root": {"level": level.upper(), "handlers": ["queue"]},
    }


def queue_handler() -> logging.Handler:
    """The root handler: puts records (with their request id) on the queue of a writer thread
    started here, replacing any earlier one."""
    global _listener
    flush_logging(final=True)
    writer = logging.StreamHandler()
    writer.setFormatter(logging.Formatter(_FORMAT))
    # Unbounded: a burst is absorbed rather than blocking the loop. Overload refusals are
    # counted in metrics, not logged one by one, so bursts stay small.
    queue: Queue[logging.LogRecord] = Queue()
    handler = logging.handlers.QueueHandler(queue)
    handler.addFilter(RequestIdFilter())
    _listener = logging.handlers.QueueListener(queue, writer)
    _listener.start()
    atexit.unregister(flush_logging)
    atexit.register(flush_logging, final=True)
    # uvicorn re-raises the SIGTERM that stopped it once it has shut down gracefully; the
    # process then dies of it without running atexit. Flush first, then die of it as before.
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _flush_then_terminate)
    return handler


def flush_logging(final: bool = False) -> None:
    """Write every queued record now; unless ``final``, the writer thread then goes on."""
    global _listener
    listener = _listener
    if listener is None:
        return
    listener.stop()  # drains the queue, then joins the thread
    for handler in listener.handlers:
        handler.flush()
    if final:
        _listener = None
    else:
        listener.start()


def _flush_then_terminate(signum: int, _frame: object) -> None:
    flush_logging(final=True)
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


class RequestIdMiddleware:
    """Takes a caller's X-Request-ID when well-formed, else makes one; echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _VALID_ID.match(incoming) else new_request_id()
        token = request_id_var.set(request_id)
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", raw_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
