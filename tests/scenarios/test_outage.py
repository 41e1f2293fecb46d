"""The online store dies or hangs under a stream of requests: a real redis-server, a real uvicorn.

The service runs as `python -m scoring_service serve` (its own process, real wall time), on a
redis-server of this module's own holding a copy of the session store's data. Under a steady
stream of requests the store is first frozen (SIGSTOP: a hung store, reads time out) and then
killed (SIGKILL: connections refused) and restarted on the same port. Every request must be
answered with a score or the outage policy's answer, no later than its deadline plus a bound;
readiness must go false during each outage and true again on its own soon after it; and the
scores after the outage must equal the scores before it.

The verdicts wait on what they check (answers of each kind, readiness), not on fixed sleeps. The
bound on an answer's lateness is generous (a loaded two-core machine keeps it) yet meaningful:
the store's socket timeout is set well above deadline + bound, so an answer that waited for a
hung read, instead of being cut at the deadline, still fails.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import redis

from tests.conftest import RedisServer, free_port
from tests.fixtures.load import LATE_BOUND_S, Answer, Load
from tests.fixtures.service import API_KEY, Replica, as_request, launch_replica

pytestmark = pytest.mark.redis

DEADLINE_MS = 250
# A hung read lasts this long: above deadline + bound, so an answer that waited for it fails.
STORE_TIMEOUT_MS = 5_000
# Readiness comes back on its own this soon after the store does (no restart, no operator).
READY_WITHIN_S = 5.0
# Longest wait for a phase's answers or for readiness to go false (a loaded machine is slow).
PHASE_WITHIN_S = 60.0
# Answers of a kind each phase waits for.
PER_PHASE = 10
LABELS = {"not_fraud", "suspicious", "highly_suspicious", "uncertain"}


@pytest.fixture(scope="module")
def outage_redis(
    redis_server: RedisServer, redis_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RedisServer, Path]]:
    """A redis-server this module may freeze and kill, with the session store's data, and a
    feature_store.yaml pointing at it."""
    source = redis.Redis(port=redis_server.port)
    source.save()
    source.close()
    workdir = tmp_path_factory.mktemp("redis_outage")
    # Restarts load this snapshot again (the server itself never saves), so data survives.
    shutil.copy(redis_server.workdir / "dump.rdb", workdir / "dump.rdb")
    server = RedisServer(port=free_port(), workdir=workdir)
    server.start()
    try:
        yaml = redis_repo / "feature_store.outage.yaml"
        yaml.write_text(
            (redis_repo / "feature_store.redis.yaml")
            .read_text()
            .replace("${REDIS_CONNECTION_STRING}", server.connection_string)
        )
        yield server, yaml
    finally:
        server.stop()


def start_service(repo: Path, yaml: Path, model_root: Path, tmp: Path, **settings: str) -> Replica:
    """Start the service on a free port and wait until it is ready. Generous deadlines by
    default; the request stream asks for DEADLINE_MS with X-Deadline-Ms."""
    service = launch_replica(
        repo, yaml, model_root, tmp, store_timeout_ms=str(STORE_TIMEOUT_MS), **settings
    )
    service.wait_ready(120)
    return service


@pytest.fixture(scope="module")
def services(
    outage_redis: tuple[RedisServer, Path],
    redis_repo: Path,
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], Replica]]:
    """One service per outage policy, started on first use and shared by this module's tests
    (the SIGTERM test, last, ends the degrade one)."""
    _, yaml = outage_redis
    tmp = tmp_path_factory.mktemp("services")
    started: dict[str, Replica] = {}

    def get(policy: str) -> Replica:
        if policy not in started:
            started[policy] = start_service(redis_repo, yaml, model_root, tmp, outage_policy=policy)
        return started[policy]

    yield get
    for service in started.values():
        service.stop()


@functools.cache
def http() -> httpx.Client:
    """One client for the polling helpers (a client per call would load the CA bundle, CPU a
    loaded machine cannot spare, on every poll); it keeps no connection open between calls."""
    return httpx.Client(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0))


def ready(url: str) -> bool:
    try:
        return http().get(f"{url}/health/ready", timeout=5.0).status_code == 200
    except httpx.TransportError:
        return False


def wait_refused(port: int, within: float) -> None:
    """Until the port refuses new connections (the server stopped listening)."""
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"port {port} still accepts connections after {within} s")
        time.sleep(0.02)


def wait_ready(url: str, expected: bool, within: float) -> float:
    """Seconds until readiness is `expected`; fails after `within` seconds."""
    started = time.monotonic()
    while ready(url) != expected:
        if time.monotonic() - started > within:
            pytest.fail(f"readiness not {expected} within {within} s")
        time.sleep(0.02)
    return time.monotonic() - started


def kind_of(answer: Answer) -> str:
    """ "scored" for a model's answer, "busy" for 503 overloaded (a deadline missed because the
    service itself ran late: legitimate on a loaded machine), "outage" for anything else (the
    outage policy's answer, checked as such)."""
    status, data = answer.status, answer.data
    if status == 200 and data is not None and data.get("reasons") != ["feature_store_unavailable"]:
        return "scored"
    if status == 503 and data is not None and data.get("code") == "overloaded":
        return "busy"
    return "outage"


class Stream(Load):
    """Requests posted back to back with the stream's deadline, counted by kind of answer."""

    def __init__(self, url: str, bodies: list[dict]) -> None:
        super().__init__(url, bodies, threads=3, deadline_ms=DEADLINE_MS)

    def count(self, kind: str) -> int:
        """Answers so far of one kind (see ``kind_of``)."""
        return sum(1 for answer in list(self.answers) if kind_of(answer) == kind)

    def wait_for(self, kind: str, more: int, within: float = PHASE_WITHIN_S) -> None:
        """Until ``more`` answers of ``kind`` have come in after this call."""
        target = self.count(kind) + more
        deadline = time.monotonic() + within
        while self.count(kind) < target:
            if time.monotonic() > deadline:
                pytest.fail(f"fewer than {more} {kind} answers within {within} s")
            time.sleep(0.01)


def scores(url: str, bodies: list[dict]) -> list[float]:
    """Model scores of the bodies; a rare deadline miss on a busy machine is retried."""
    out = []
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=5.0) as client:
        for body in bodies:
            for _ in range(5):
                answer = client.post("/v1/transactions/score", json=body)
                if answer.status_code == 200 and answer.json()["score"] is not None:
                    break
                time.sleep(0.05)
            assert answer.status_code == 200, answer.text
            assert answer.json()["reasons"] != ["feature_store_unavailable"]
            out.append(answer.json()["score"])
    return out


@pytest.mark.parametrize("policy", ["fail", "degrade"])
def test_store_outage_under_load(
    policy: str,
    outage_redis: tuple[RedisServer, Path],
    services: Callable[[str], Replica],
    recent: pd.DataFrame,
) -> None:
    server, _ = outage_redis
    service = services(policy)
    bodies = [as_request(row) for _, row in recent.tail(12).iterrows()]
    before = scores(service.url, bodies)
    assert server.process is not None
    with Stream(service.url, bodies) as stream:
        stream.wait_for("scored", PER_PHASE)

        # A hung store: connections accepted, nothing answered.
        server.process.send_signal(signal.SIGSTOP)
        wait_ready(service.url, False, within=PHASE_WITHIN_S)
        stream.wait_for("outage", PER_PHASE)
        server.process.send_signal(signal.SIGCONT)
        back_from_hang = wait_ready(service.url, True, within=READY_WITHIN_S)
        stream.wait_for("scored", PER_PHASE)

        # A dead store: the process is gone, connections are refused; then it restarts.
        server.process.kill()
        server.process.wait()
        wait_ready(service.url, False, within=PHASE_WITHIN_S)
        stream.wait_for("outage", PER_PHASE)
        server.start()
        back_from_death = wait_ready(service.url, True, within=READY_WITHIN_S)
        stream.wait_for("scored", PER_PHASE)
    after = scores(service.url, bodies)
    assert service.process.poll() is None, service.logs()

    assert back_from_hang <= READY_WITHIN_S and back_from_death <= READY_WITHIN_S
    assert not stream.failures, stream.failures[:5]
    for answer in stream.answers:
        elapsed, status, data = answer.elapsed, answer.status, answer.data
        # Cut at the deadline: never as late as a hung read (STORE_TIMEOUT_MS).
        assert elapsed <= DEADLINE_MS / 1000 + LATE_BOUND_S, (elapsed, status, data)
        assert data is not None
        kind = kind_of(answer)
        if kind == "scored":
            assert data["label"] in LABELS and 0.0 <= data["score"] <= 1.0
        elif kind == "busy":
            assert data["retry_after"] == "1", data
        elif policy == "fail":
            assert status == 503, data
            assert data["code"] == "feature_store_unavailable", data
            assert data["retry_after"] == "1"
        else:
            assert status == 200, data
            assert data["label"] == "uncertain" and data["score"] is None, data
    assert after == before


def test_sigterm_finishes_in_flight_requests(
    services: Callable[[str], Replica], valid_body: dict
) -> None:
    """SIGTERM: stop accepting, finish the request in flight, close resources, exit."""
    service = services("degrade")
    port = int(service.url.rsplit(":", 1)[1])
    body = json.dumps(valid_body).encode()
    head = (
        "POST /v1/transactions/score HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nX-API-Key: {API_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + body[:10])  # the request is in flight, its body half sent
        # A later request answered on another connection: the server has read the first one's
        # head (its bytes were waiting before the second connection existed).
        assert http().get(f"{service.url}/health/live", timeout=60).status_code == 200
        service.process.send_signal(signal.SIGTERM)
        wait_refused(port, within=PHASE_WITHIN_S)
        sock.sendall(body[10:])
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    answer: dict[str, Any] = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert answer["transaction_id"] == valid_body["transaction_id"]
    assert answer["reasons"] != ["feature_store_unavailable"]
    # uvicorn re-raises the signal once it has shut down gracefully.
    assert service.process.wait(timeout=20) in (0, -signal.SIGTERM)
    logs = service.logs()
    assert "Finished server process" in logs and "stopped" in logs, logs
