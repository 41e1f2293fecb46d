"""Replicas behind a load balancer: nginx (infra/nginx/nginx.conf) in front of three real
`python -m scoring_service serve` processes on the session's redis-server, under a steady
stream of scores.

- SIGTERM to one replica: it stops accepting, finishes what it holds and exits; nginx sends
  new requests (and any sent onto a connection the replica was closing) to the others:
  0 failed requests.
- SIGKILL to one replica holding requests (hung first with SIGSTOP, so that it surely holds
  some): only the requests it held may fail (nginx retries them, being allowed to: scoring is
  idempotent), never more; every request started after it is answered by the others.

Counts are printed (pytest -s) and kept in the assertion messages.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.conftest import RedisServer
from tests.fixtures.nginx import CONFIG, LogEntry, Nginx, nginx_binary
from tests.fixtures.service import API_HEADERS, Replica, as_request, launch_replica

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.redis,
    pytest.mark.slow,
    # Session artefacts (data, a trained model) and real processes, on a busy two-core box.
    pytest.mark.timeout(1200),
]

REPLICAS = 3
CLIENTS = 4  # threads, each with one request in flight at a time
WAIT_S = 120.0  # a bound on conditions, never a margin a test relies on


@dataclass
class Pool:
    """The replicas and the load balancer in front of them."""

    replicas: list[Replica]
    nginx: Nginx

    def live(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.process.poll() is None]


@pytest.fixture(scope="module")
def pool(
    redis_repo: Path,
    redis_server: RedisServer,
    model_root: Path,
    nginx_for: Callable[[list[str]], Nginx],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pool]:
    logs = tmp_path_factory.mktemp("replica_logs")
    env = {"REDIS_CONNECTION_STRING": redis_server.connection_string}
    yaml = redis_repo / "feature_store.redis.yaml"
    replicas = [
        launch_replica(redis_repo, yaml, model_root, logs, env=env) for _ in range(REPLICAS)
    ]
    try:
        for replica in replicas:
            replica.wait_ready()
        yield Pool(replicas, nginx_for([replica.address for replica in replicas]))
    finally:
        for replica in replicas:
            replica.stop()


@dataclass
class Outcome:
    """One request of the load: when it ran and how it ended."""

    started: float  # epoch seconds
    ended: float
    status: int | None  # None: no HTTP answer at all
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.status != 200


@dataclass
class Load:
    """Client threads scoring through the load balancer back to back."""

    url: str
    bodies: list[dict]
    outcomes: list[Outcome] = field(default_factory=list)
    # Start times (epoch seconds) of the requests sent and not yet answered, per thread.
    pending: dict[int, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, offset: int) -> None:
        with httpx.Client(base_url=self.url, headers=API_HEADERS, timeout=60.0) as client:
            i = offset
            while not self._stop.is_set():
                body = self.bodies[i % len(self.bodies)]
                i += 1
                started = time.time()
                with self._lock:
                    self.pending[offset] = started
                try:
                    response = client.post("/v1/transactions/score", json=body)
                    outcome = Outcome(started, time.time(), response.status_code)
                    if response.status_code != 200 or response.json()["score"] is None:
                        outcome = Outcome(started, outcome.ended, None, response.text[:300])
                except httpx.HTTPError as exc:
                    outcome = Outcome(started, time.time(), None, repr(exc))
                with self._lock:
                    del self.pending[offset]
                    self.outcomes.append(outcome)
                self._stop.wait(0.002)

    def freeze(self, action: Callable[[], object]) -> int:
        """Run ``action`` while no request starts or ends; the requests in flight meanwhile."""
        with self._lock:
            action()
            return len(self.pending)

    def waiting_longer_than(self, seconds: float) -> int:
        """Requests sent more than ``seconds`` ago and still unanswered."""
        now = time.time()
        with self._lock:
            return sum(now - started > seconds for started in self.pending.values())

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_for(self, answers: int) -> None:
        """Until this many requests have been answered in all."""
        deadline = time.monotonic() + WAIT_S
        while self.count() < answers:
            assert time.monotonic() < deadline, f"only {self.count()} of {answers} answers"
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for n in range(CLIENTS):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=WAIT_S)


def wait_until_served_by(nginx: Nginx, replica: Replica, requests: int) -> None:
    """Until the replica has answered this many requests through nginx (it holds traffic)."""
    deadline = time.monotonic() + WAIT_S
    while sum(e.upstreams[-1:] == (replica.address,) for e in nginx.access_log()) < requests:
        assert time.monotonic() < deadline, f"{replica.address} got no traffic"
        time.sleep(0.05)


def bodies_of(recent: pd.DataFrame) -> list[dict]:
    return [as_request(row) for _, row in recent.tail(16).iterrows()]


def test_sigterm_one_replica_under_load_fails_no_request(pool: Pool, recent: pd.DataFrame) -> None:
    live = pool.live()
    assert len(live) >= 2, "needs a replica to stop and one to carry on"
    victim = live[0]
    with Load(pool.nginx.url, bodies_of(recent)) as load:
        wait_until_served_by(pool.nginx, victim, 20)
        signalled = time.time()
        victim.send(signal.SIGTERM)
        status = victim.process.wait(timeout=WAIT_S)
        exited = time.time()
        # Keep going until plenty of requests have been answered with the replica gone.
        load.wait_for(load.count() + 200)
    log = pool.nginx.access_log()
    failures = [o for o in load.outcomes if o.failed]
    drained = [e for e in log if victim.address in e.upstreams and e.ended >= signalled]
    retried = [e for e in log if e.retried]
    counts = (
        f"SIGTERM: {len(load.outcomes)} requests, {len(failures)} failed; "
        f"{len(drained)} touched the replica after the signal, {len(retried)} retried by "
        f"nginx; exit status {status} after {exited - signalled:.2f} s"
    )
    print(f"\n{counts}")
    assert status in (0, -signal.SIGTERM), victim.logs()
    assert "Finished server process" in victim.logs(), victim.logs()
    assert not failures, (counts, failures[:5])
    assert all(entry.status == 200 for entry in log), counts


# nginx's clock is read once per event-loop turn and logged to the millisecond.
CLOCK_EDGE_S = 0.01


def victim_in_flight(log: list[LogEntry], victim: Replica, at: float) -> int:
    """Requests nginx had sent to the replica and not yet answered at the instant ``at``."""
    return sum(
        1
        for e in log
        if victim.address in e.upstreams and e.started <= at + CLOCK_EDGE_S and e.ended >= at
    )


def test_sigkill_one_replica_under_load_fails_at_most_its_in_flight_requests(
    pool: Pool, recent: pd.DataFrame
) -> None:
    live = pool.live()
    assert len(live) >= 2, "needs a replica to kill and one to carry on"
    victim = live[0]
    with Load(pool.nginx.url, bodies_of(recent)) as load:
        wait_until_served_by(pool.nginx, victim, 20)
        # The replica hangs first (SIGSTOP), so it certainly holds requests when it is killed:
        # nginx keeps sending it every few requests, and they wait there. Two requests
        # unanswered for a second, while the other replicas answer in milliseconds, are there.
        victim.send(signal.SIGSTOP)
        deadline = time.monotonic() + WAIT_S
        while load.waiting_longer_than(1.0) < 2:
            assert time.monotonic() < deadline, "the hung replica got no requests"
            time.sleep(0.05)
        killed = time.time()
        client_in_flight = load.freeze(lambda: victim.send(signal.SIGKILL))
        victim.process.wait(timeout=WAIT_S)
        gone = time.time()
        load.wait_for(load.count() + 200)
    log = pool.nginx.access_log()
    before = [o for o in load.outcomes if o.ended < killed]
    during = [o for o in load.outcomes if o.started <= gone and o.ended >= killed]
    after = [o for o in load.outcomes if o.started > gone]
    failed_before = [o for o in before if o.failed]
    failed_during = [o for o in during if o.failed]
    failed_after = [o for o in after if o.failed]
    in_flight = victim_in_flight(log, victim, killed)
    retried = [e for e in log if e.retried and e.ended >= killed]
    counts = (
        f"SIGKILL: {in_flight} requests in flight at the replica ({client_in_flight} in the "
        f"clients), {len(failed_during)} of {len(during)} around the kill failed, "
        f"{len(retried)} retried by nginx; afterwards {len(failed_after)} of {len(after)} failed"
    )
    print(f"\n{counts}")
    assert in_flight >= 1, counts
    assert not failed_before, (counts, failed_before[:5])
    # Only what the replica held can fail: no more than nginx had sent it and, a bound that
    # needs no clock at all, no more than the clients had outstanding when it was killed.
    assert len(failed_during) <= in_flight, (counts, failed_during[:5])
    assert len(failed_during) <= client_in_flight, (counts, failed_during[:5])
    assert len(after) >= 150 and not failed_after, (counts, failed_after[:5])


def test_example_configuration_is_valid(tmp_path: Path) -> None:
    """infra/nginx/nginx.conf with its example includes, as shipped, passes `nginx -t`."""
    result = subprocess.run(
        [
            nginx_binary(),
            "-t",
            "-p", str(tmp_path),
            "-e", str(tmp_path / "error.log"),
            "-c", str(CONFIG),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr, result.stderr
