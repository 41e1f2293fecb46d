"""Slow clients bounded, on a real service process with real sockets: a client trickling its
headers, one that sends nothing, and one that stalls its body are each closed with 408
``request_timeout``; past the cap on open connections a new one gets 503 ``overloaded`` and is
closed before anything of it is read, and is let in again once a connection closes.

The verdicts wait for what they check (the server closing a socket), up to a generous bound,
never on a margin: the time limits are short, idle keep-alive connections are kept long.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.service import API_KEY, Replica, launch_replica

pytestmark = pytest.mark.slow

CAP = 12
WAIT_S = 60.0  # longest wait for the server to close a socket (a loaded machine is slow)


@pytest.fixture(scope="module")
def replica(sqlite_repo: Path, model_root: Path, tmp_path_factory) -> Iterator[Replica]:
    service = launch_replica(
        sqlite_repo,
        sqlite_repo / "feature_store.yaml",
        model_root,
        tmp_path_factory.mktemp("slow_clients"),
        header_timeout_s="1",
        body_timeout_s="1",
        keep_alive_s="600",
        max_connections=str(CAP),
    )
    service.wait_ready()
    yield service
    service.stop()


def connect(replica: Replica) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", replica.port), timeout=WAIT_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def answer_of(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head[9:12]), json.loads(body)


def health(sock: socket.socket) -> bytes:
    """One keep-alive request on an open connection; its answer."""
    sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_trickled_headers_are_cut(replica: Replica) -> None:
    sock = connect(replica)
    sock.sendall(b"POST /v1/transactions/score HTTP/1.1\r\nHost: t\r\n")
    started = time.monotonic()
    sock.settimeout(0.2)
    closed = b""
    while time.monotonic() - started < WAIT_S:
        try:
            sock.sendall(b"X")  # a header that never ends, a byte at a time
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break  # reset: closed while we were still sending
        if not data:
            break
        closed += data
    else:
        pytest.fail("the server kept a connection trickling its headers")
    sock.close()
    if closed:
        status, body = answer_of(closed)
        assert (status, body["code"]) == (408, "request_timeout")


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"POST /v1/transactions/score HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n"
        + f"X-API-Key: {API_KEY}\r\n\r\n".encode()
        + b'{"a":',
    ],
    ids=["nothing", "stalled-body"],
)
def test_silent_clients_are_closed_with_408(replica: Replica, sent: bytes) -> None:
    with connect(replica) as sock:
        sock.sendall(sent)
        status, body = answer_of(read_until_closed(sock))
    assert (status, body["code"], body["stage"]) == (408, "request_timeout", "service")


def test_connections_past_the_cap_are_refused_at_once(replica: Replica) -> None:
    held = [connect(replica) for _ in range(CAP)]
    try:
        for sock in held:  # each served once: accepted and counted, now idle keep-alive
            assert health(sock).startswith(b"HTTP/1.1 200")
        with connect(replica) as extra:
            status, body = answer_of(read_until_closed(extra))
        assert (status, body["code"]) == (503, "overloaded")
        assert "connections open" in body["message"]
        held.pop().close()
        deadline = time.monotonic() + WAIT_S
        while True:  # the server sees the close on its next turn: then one more is let in
            with connect(replica) as again:
                again.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                if read_until_closed(again).startswith(b"HTTP/1.1 200"):
                    break
            assert time.monotonic() < deadline, "a freed slot was never given again"
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
