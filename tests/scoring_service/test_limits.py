"""Limits: deadlines, outage policy, overload, circuit breaker, body size, model failure.

The store's slowness is played by a scorer whose read blocks a worker thread until the test
releases it, exactly what a hung read does, before delegating to the real scorer; deadlines are
real wall time. Verdicts rest on what happened (the read was still blocked when the answer came,
no read was started) rather than on tight timings: a bound on lateness is there only to tell
"cut at the deadline" from "waited for the hung read", and is generous enough for a loaded
two-core machine.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scoring_service.api.app import create_app
from scoring_service.api.deps import get_scorer
from scoring_service.core.errors import FeatureStoreUnavailable
from tests.scoring_service.conftest import API_HEADERS, settings_for

# How late after its deadline an answer may come (test client, scheduling, a busy machine).
LATE_BOUND_S = 2.0
# Longest a blocked read waits for its release: far beyond any deadline under test.
HANG_LIMIT_S = 60.0
# Codes of a call cut at its deadline: the outage policy's, or overloaded when the event loop
# itself ran late by a fair share of the budget (a busy machine: short budgets only; the tests
# that check the policy's own answer give budgets of seconds).
DEADLINE_CODES = {"feature_store_unavailable", "overloaded"}


class SlowScorer:
    """The live scorer behind a read that blocks until ``release`` is set (a hung store), then
    fails like a socket timeout when ``fails``. ``hangs=False``: the read does not block."""

    def __init__(self, inner: Any, hangs: bool = True, fails: bool = False) -> None:
        self.inner = inner
        self.fails = fails
        self.release = threading.Event()
        if not hangs:
            self.release.set()
        self.started = 0
        self.finished = 0

    def __getattr__(self, name: str) -> Any:
        # Everything but the read (model, mapping, labels...) is the live scorer's.
        return getattr(self.inner, name)

    def _read(self) -> None:
        self.started += 1
        self.release.wait(HANG_LIMIT_S)
        self.finished += 1

    async def score(self, mapped: Any) -> Any:
        await asyncio.to_thread(self._read)
        if self.fails:
            raise FeatureStoreUnavailable("the read timed out")
        return await self.inner.score(mapped)


@pytest.fixture()
def make_client(sqlite_repo: Path, model_root: Path) -> Callable[..., Any]:
    """Start an app with some settings; optionally put a slow scorer in front of its own."""

    @contextmanager
    def start(
        hangs: bool | None = None, fails: bool = False, **settings: Any
    ) -> Iterator[TestClient]:
        app = create_app(settings_for(sqlite_repo, model_root, **settings))
        with TestClient(app, headers=API_HEADERS) as client:
            # Warm the request path (first-call costs must not eat the deadlines under test).
            client.post("/v1/transactions/score", json={})
            slow = None
            if hangs is not None:
                slow = SlowScorer(app.state.primary.scorer, hangs, fails)
                app.dependency_overrides[get_scorer] = lambda: slow
            try:
                yield client
            finally:
                if slow is not None:
                    slow.release.set()  # blocked reads end, so their threads can be joined

    return start


def slow_of(client: TestClient) -> SlowScorer:
    return client.app.dependency_overrides[get_scorer]()  # type: ignore[attr-defined]


def timed(client: TestClient, body: dict, **headers: str) -> tuple[Any, float]:
    started = time.perf_counter()
    response = client.post("/v1/transactions/score", json=body, headers=headers)
    return response, time.perf_counter() - started


def test_deadline_fail_policy(make_client, valid_body) -> None:
    deadline_s = 3.0
    with make_client(hangs=True, deadline_ms=3000, outage_policy="fail") as client:
        slow = slow_of(client)
        response, elapsed = timed(client, valid_body)
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "feature_store_unavailable"
        assert response.json()["stage"] == "features"
        assert response.headers["retry-after"] == "1"
        # Answered at the deadline, while the read was still hung.
        assert deadline_s <= elapsed < deadline_s + LATE_BOUND_S
        assert slow.started == 1 and slow.finished == 0

        # A caller may ask for less: answered before the service's own deadline (by the policy,
        # or as overloaded when a busy machine made the loop itself run late)...
        shorter, elapsed = timed(client, valid_body, **{"X-Deadline-Ms": "400"})
        assert shorter.json()["code"] in DEADLINE_CODES
        assert elapsed < deadline_s
        # ...never for more: a longer ask is cut to the service's deadline.
        capped, elapsed = timed(client, valid_body, **{"X-Deadline-Ms": "60000"})
        assert capped.json()["code"] == "feature_store_unavailable"
        assert deadline_s <= elapsed < deadline_s + LATE_BOUND_S
        assert slow.finished == 0

        invalid = client.post(
            "/v1/transactions/score", json=valid_body, headers={"X-Deadline-Ms": "soon"}
        )
        assert invalid.status_code == 422
        assert invalid.json()["message"].startswith("X-Deadline-Ms: ")


def test_deadline_degrade_policy(make_client, valid_body) -> None:
    with make_client(
        hangs=True, deadline_ms=3000, outage_policy="degrade", fallback_score=0.5
    ) as client:
        response, elapsed = timed(client, valid_body)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == "uncertain"
        assert body["reasons"] == ["feature_store_unavailable"]
        assert body["score"] == 0.5
        assert body["feature_freshness"] == {}
        assert elapsed < 3.0 + LATE_BOUND_S
        assert slow_of(client).finished == 0  # the read is still hung
        entity = client.get("/v1/cards/card_0000001/score")
        assert entity.status_code == 200 and entity.json()["label"] == "uncertain"


def test_overload_is_refused_at_once(make_client, valid_body) -> None:
    with (
        make_client(hangs=True, deadline_ms=60_000, max_in_flight=2) as client,
        ThreadPoolExecutor(6) as pool,
    ):
        slow = slow_of(client)
        calls = [pool.submit(timed, client, valid_body) for _ in range(6)]
        # Two calls hold the slots (their reads hang until released); the other four are
        # refused while they do: the refusals come back before any read is let go.
        refused: list[Any] = []
        pending = set(calls)
        while len(refused) < 4:
            done, pending = wait(pending, timeout=HANG_LIMIT_S, return_when=FIRST_COMPLETED)
            assert done, "no call was refused"
            refused.extend(f.result()[0] for f in done)
        assert client.app.state.guard.in_flight == 2  # type: ignore[attr-defined]
        assert slow.finished == 0
        slow.release.set()
        admitted = [f.result()[0] for f in pending]
    assert [r.status_code for r in admitted] == [200, 200]
    for response in refused:
        assert response.status_code == 503
        assert response.json()["code"] == "overloaded"
        assert response.headers["retry-after"] == "1"


def test_abandoned_work_cannot_pile_up(make_client, valid_body) -> None:
    """Calls cancelled at their deadline: work not started is dropped, and the reads already
    running (threads that cannot be killed) never outnumber the worker pool."""
    pool = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
    with make_client(
        hangs=True, deadline_ms=200, max_in_flight=1000, breaker_failures=1000
    ) as client:
        slow = slow_of(client)
        for _ in range(pool + 10):
            response, _ = timed(client, valid_body)
            assert response.json()["code"] in DEADLINE_CODES
        # Every read that started is still hung: none ended to make room for another.
        assert slow.finished == 0
        assert slow.started <= pool
        assert client.app.state.guard.in_flight == 0  # type: ignore[attr-defined]


def test_late_reads_do_not_open_the_circuit(make_client, valid_body) -> None:
    """Reads that are only late (a busy machine: other calls still got their features within
    the breaker's window) answer by the policy, but do not open the circuit."""
    with make_client(breaker_failures=2, breaker_reset_ms=600_000, deadline_ms=60_000) as client:
        app: Any = client.app
        # A call that gets its features.
        ok = client.post("/v1/transactions/score", json=valid_body)
        assert ok.status_code == 200, ok.text
        slow = SlowScorer(app.state.primary.scorer, hangs=True)
        app.dependency_overrides[get_scorer] = lambda: slow
        try:
            for _ in range(2):
                response, _ = timed(client, valid_body, **{"X-Deadline-Ms": "1000"})
                assert response.json()["code"] in DEADLINE_CODES
            assert not app.state.guard.breaker.is_open
        finally:
            slow.release.set()


def test_circuit_opens_and_closes(make_client, valid_body) -> None:
    with make_client(
        hangs=False, fails=True, deadline_ms=10_000, breaker_failures=2, breaker_reset_ms=3_000
    ) as client:
        app: Any = client.app
        breaker = app.state.guard.breaker
        slow = slow_of(client)
        for _ in range(2):
            timed(client, valid_body)
        assert breaker.is_open and slow.started == 2
        # While open, no read is started: the policy answers at once and takes no slot.
        response, _ = timed(client, valid_body)
        assert response.json()["code"] == "feature_store_unavailable"
        assert slow.started == 2
        assert app.state.guard.in_flight == 0
        # The store recovers: after the pause one trial read goes through and closes it.
        del app.dependency_overrides[get_scorer]
        time.sleep(max(0.0, breaker.opened_at + breaker.reset_s - time.monotonic()) + 0.05)
        recovered, _ = timed(client, valid_body)
        assert recovered.status_code == 200, recovered.text
        assert not breaker.is_open


def test_model_failure_is_503_model_unavailable(make_client, valid_body) -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    class BrokenSession:
        def run(self, *args: Any, **kwargs: Any) -> Any:
            raise Fail("simulated runtime failure")

    with make_client() as client:
        app: Any = client.app
        app.state.primary.scorer.model.predictor.session = BrokenSession()
        response = client.post("/v1/transactions/score", json=valid_body)
        assert response.status_code == 503, response.text
        body = response.json()
        assert (body["code"], body["stage"]) == ("model_unavailable", "predict")
        assert "simulated" not in body["message"]
        assert not app.state.guard.breaker.is_open


def test_body_limit(make_client, valid_body) -> None:
    with make_client(max_body_bytes=2048) as client:
        assert client.post("/v1/transactions/score", json=valid_body).status_code == 200
        big = {"transactions": [{**valid_body, "transaction_id": f"t{i}"} for i in range(20)]}
        declared = client.post("/v1/transactions/score-batch", json=big)
        assert declared.status_code == 413
        body = declared.json()
        assert (body["code"], body["stage"]) == ("payload_too_large", "request")
        assert "2048 bytes" in body["message"]
        assert body["request_id"] == declared.headers["x-request-id"]

        def chunks() -> Iterator[bytes]:
            yield b'{"transactions": ['
            for _ in range(100):
                yield b'{"transaction_id": "' + b"x" * 40 + b'"},'
            yield b"{}]}"

        chunked = client.post(
            "/v1/transactions/score-batch",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert chunked.status_code == 413
        assert chunked.json()["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"transaction_id": "t" * 65}, "transaction_id"),
        ({"card_id": "c" * 65}, "card_id"),
        ({"ip_address": "1" * 46}, "ip_address"),
        ({"ip_address": "::ffff:1.2.3.4.5"}, "ip_address"),
        ({"amount": 1e10}, "amount"),
        ({"currency": "U" * 1000}, "currency"),
    ],
)
def test_strings_and_numbers_are_bounded(client, valid_body, change, field) -> None:
    response = client.post("/v1/transactions/score", json={**valid_body, **change})
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(f"{field}: ")
