"""The server's protocol at the admission limit, on a real uvicorn server and raw sockets:
refusals written straight to the socket keep the connection's framing, a request at the limit
waits for a slot and the newest is served first, and a wait that runs out is refused.

The app behind it records what it was sent; the calls in flight are set by the test (the
protocol only reads the admission state), so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from scoring_service.api.admission import Admission, AdmissionMiddleware, Classifier
from scoring_service.api.server import BoundedHttpToolsProtocol
from scoring_service.core.settings import Settings
from tests.conftest import free_port
from tests.fixtures.service import FRAUD_API


class Recorder:
    """Answers 200 with the bytes of the body it read; keeps the bodies in order."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.loop = asyncio.get_running_loop()
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        out = json.dumps({"read": len(body)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(out)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": out})


class Served(SimpleNamespace):
    admission: Admission
    recorder: Recorder
    port: int

    def on_loop(self, action: Callable[[], Any]) -> None:
        """Run ``action`` on the server's event loop, and wait for it."""
        assert self.recorder.loop is not None
        done = threading.Event()

        def run() -> None:
            action()
            done.set()

        self.recorder.loop.call_soon_threadsafe(run)
        assert done.wait(30)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return sock


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """A uvicorn server with the service's protocol and admission in front of a Recorder."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**values: Any) -> Served:
        settings = Settings(
            admission_initial_limit=4, admission_min_limit=4, max_in_flight=4, **values
        )
        admission = Admission(settings)
        recorder = Recorder()
        classify = Classifier([SimpleNamespace(api=FRAUD_API)])  # type: ignore[list-item]
        BoundedHttpToolsProtocol.configure(settings)
        BoundedHttpToolsProtocol.gate = (admission, classify)
        port = free_port()
        config = uvicorn.Config(
            AdmissionMiddleware(recorder, admission, classify),
            host="127.0.0.1",
            port=port,
            http=BoundedHttpToolsProtocol,  # type: ignore[arg-type]
            loop="uvloop",
            lifespan="on",
            log_config=None,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return Served(admission=admission, recorder=recorder, port=port)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)
    BoundedHttpToolsProtocol.gate = None
    BoundedHttpToolsProtocol.configure(Settings())


def request(body: bytes) -> tuple[bytes, bytes]:
    """A real-time score call's head and body."""
    head = (
        f"POST {FRAUD_API.score_path} HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head, body


def answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """One answer from the socket: status, headers, JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before an answer"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside an answer"
        rest += chunk
    assert len(rest) == length, "bytes past the answer: the framing is off"
    return int(lines[0].split()[1]), headers, json.loads(rest)


def wait_until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_a_refusal_written_by_the_protocol_keeps_the_connection(
    serve: Callable[..., Served],
) -> None:
    """At the limit with no wait allowed, a call is refused 503 overloaded before its body is
    sent; the body that follows is read and dropped, and the same connection then serves the
    next call with its own body intact."""
    served = serve(admission_max_wait_ms=0)
    served.admission.in_flight = 4
    first = json.dumps({"n": "x" * 300}).encode()
    with served.connect() as sock:
        head, body = request(first)
        sock.sendall(head)  # the body is not sent yet
        status, headers, refusal = answer(sock)
        assert status == 503 and refusal["code"] == "overloaded", refusal
        assert refusal["stage"] == "service" and refusal["request_id"]
        assert headers["retry-after"] == "1" and "connection" not in headers
        sock.sendall(body)  # the refused call's body, late
        served.on_loop(lambda: setattr(served.admission, "in_flight", 0))
        second = b'{"second": true}'
        sock.sendall(b"".join(request(second)))
        status, _, got = answer(sock)
    assert status == 200 and got == {"read": len(second)}
    assert served.recorder.bodies == [second]  # the refused body never reached the app


def test_a_call_at_the_limit_waits_and_the_newest_is_served_first(
    serve: Callable[..., Served],
) -> None:
    """Two calls arrive at a full limit and wait; one slot frees: the newer call is answered
    first, and the slot it frees goes to the older one. Both are answered 200."""
    served = serve(admission_max_wait_ms=30_000, deadline_ms=60_000)
    served.admission.in_flight = 4
    older, newer = served.connect(), served.connect()
    with older, newer:
        older.sendall(b"".join(request(b'{"older": 1}')))
        wait_until(lambda: served.admission.waiting == 1)
        newer.sendall(b"".join(request(b'{"newer": 2}')))
        wait_until(lambda: served.admission.waiting == 2)
        assert served.recorder.bodies == []

        def free_one() -> None:
            served.admission.in_flight -= 1
            served.admission.release()

        served.on_loop(free_one)
        assert answer(newer)[0] == 200
        assert answer(older)[0] == 200
    assert served.recorder.bodies == [b'{"newer": 2}', b'{"older": 1}']
    wait_until(lambda: served.admission.in_flight == 3)  # the freed slot is free again
    assert served.admission.waiting == 0


def test_a_wait_that_runs_out_is_refused_and_the_connection_kept(
    serve: Callable[..., Served],
) -> None:
    """A call waits at a full limit past its wait: 503 overloaded; the connection then serves
    the next call."""
    served = serve(admission_max_wait_ms=50, deadline_ms=60_000)
    served.admission.in_flight = 4
    with served.connect() as sock:
        sock.sendall(b"".join(request(b'{"waits": true}')))
        status, headers, refusal = answer(sock)
        assert status == 503 and refusal["code"] == "overloaded" and headers["retry-after"]
        assert served.admission.waiting == 0
        served.on_loop(lambda: setattr(served.admission, "in_flight", 0))
        sock.sendall(b"".join(request(b"{}")))
        assert answer(sock)[0] == 200
    assert served.recorder.bodies == [b"{}"]
