"""Logging and request ids: one line per record with the request id, written by a thread and
flushed when the process is stopped; an id per request, the caller's when well-formed, echoed
in the answer and present in every log line made while the request is handled.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from scoring_service.core.logs import (
    RequestIdFilter,
    RequestIdMiddleware,
    current_request_id,
    log_config,
    new_request_id,
    request_id_var,
)
from tests.conftest import ROOT

LOGGING_CHILD = textwrap.dedent(
    """
    import logging, signal, threading
    from scoring_service.core.logs import configure_logging, request_id_var

    configure_logging("info")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.handlers.QueueHandler), handler
    writes = []
    writer_emit = logging.StreamHandler.emit
    def emit(self, record):
        writes.append(threading.current_thread().name)
        writer_emit(self, record)
    logging.StreamHandler.emit = emit
    request_id_var.set("req-42")
    logging.getLogger("child").info("scored %d", 7)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("child").exception("failed")
    signal.raise_signal(signal.SIGTERM)  # as uvicorn does after a graceful shutdown
    """
)


def test_logging_is_written_by_a_thread_and_flushed_at_sigterm() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOGGING_CHILD], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == -15, result.stderr
    assert "INFO child [req-42] scored 7" in result.stderr
    assert "ERROR child [req-42] failed" in result.stderr
    assert "ValueError: boom" in result.stderr


def test_request_ids_are_32_hex_characters_and_unique() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    # One process prefix, then a counter.
    assert len({i[:16] for i in ids}) == 1
    assert int(ids[-1][16:], 16) - int(ids[0][16:], 16) == len(ids) - 1


def test_forked_workers_do_not_share_the_prefix() -> None:
    child = textwrap.dedent(
        """
        import os
        from scoring_service.core.logs import new_request_id
        parent = new_request_id()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, new_request_id().encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(parent, os.read(read, 64).decode())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    parent, forked = result.stdout.split()
    assert parent[:16] != forked[:16]


def app_seeing_the_id(seen: list[str]) -> RequestIdMiddleware:
    """A Starlette app behind the middleware that records the id its handler sees and logs."""

    async def handler(request: Request) -> JSONResponse:
        seen.append(current_request_id())
        logging.getLogger("tests.request_id").warning("handled")
        return JSONResponse({"ok": True})

    return RequestIdMiddleware(Starlette(routes=[Route("/", handler)]))


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123", True),
        ("A.b_c-9" * 9 + "x", True),  # 64 characters: the longest kept
        ("A.b_c-9" * 9 + "xy", False),  # 65
        ("has space", False),
        ("semi;colon", False),
        ("", False),
        (None, False),
    ],
)
def test_a_well_formed_caller_id_is_kept_any_other_is_replaced(
    sent: str | None, kept: bool, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    headers = {"X-Request-ID": sent} if sent is not None else {}
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.WARNING, logger="tests.request_id"):
        response = TestClient(app_seeing_the_id(seen)).get("/", headers=headers)
    assert response.status_code == 200
    echoed = response.headers["x-request-id"]
    assert seen == [echoed]
    if kept:
        assert echoed == sent
    else:
        assert echoed != sent and re.fullmatch(r"[0-9a-f]{32}", echoed)
    (record,) = [r for r in caplog.records if r.name == "tests.request_id"]
    assert record.request_id == echoed  # type: ignore[attr-defined]
    assert current_request_id() == "-"  # reset once the request is answered


def test_the_filter_stamps_the_current_id_and_outside_a_request_a_dash() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert RequestIdFilter().filter(record) and record.request_id == "-"  # type: ignore[attr-defined]
    token = request_id_var.set("req-7")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    assert record.request_id == "req-7"  # type: ignore[attr-defined]


def test_uvicorn_gets_the_same_configuration_as_a_document() -> None:
    document = log_config("warning")
    assert document["handlers"] == {"queue": {"()": "scoring_service.core.logs.queue_handler"}}
    assert document["root"] == {"level": "WARNING", "handlers": ["queue"]}
    assert document["disable_existing_loggers"] is False
