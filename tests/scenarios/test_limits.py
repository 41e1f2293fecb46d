"""Limits through HTTP against a real app: deadlines cut a hung read, the outage policies'
answers, overload, abandoned work, the circuit breaker, body size, model failure, bounded fields.

What the guard decides and at which instant (deadline arithmetic, the breaker's transitions,
admission's refusals) is tested on a stepped clock in
tests/scoring_service/scoring/test_resilience.py; here only what needs the served app.

The store's slowness is played by a scorer whose read blocks a worker thread until the test
releases it, exactly what a hung read does, before delegating to the real scorer. Only the
deadline tests wait in real time (a second or two, never more); their verdicts rest on what
happened (the read was still blocked when the answer came, no read was started), and the one
bound on lateness, ``LATE_BOUND_S``, only tells "cut at the deadline" from "waited for the hung
read", which takes ``HANG_LIMIT_S``. Threads a test starts are let go and joined in ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scoring_service.api.app import create_app
from scoring_service.api.deps import get_scorer
from scoring_service.core.errors import FeatureStoreUnavailable
from scoring_service.scoring.resilience import OUTAGE_MESSAGES, RESERVE_S, ScoringGuard
from tests.fixtures.load import LATE_BOUND_S
from tests.fixtures.service import API_HEADERS, settings_for

# Longest a blocked read waits for its release: far beyond any deadline under test.
HANG_LIMIT_S = 60.0
# Longest a test waits for one thread it started to end once its calls are let go.
JOIN_S = 10.0
# Codes of a call cut at its deadline: the outage policy's, or overloaded when the event loop
# itself ran late by a tenth of the budget (a busy machine: short budgets only; the test that
# checks the policy's own answer gives a budget of seconds).
DEADLINE_CODES = {"feature_store_unavailable", "overloaded"}
SCORE = "/v1/transactions/score"


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
    """Start an app with some settings; optionally put a slow scorer in front of its own, and
    run its guard on another clock."""

    @contextmanager
    def start(
        hangs: bool | None = None,
        fails: bool = False,
        clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> Iterator[TestClient]:
        app = create_app(settings_for(sqlite_repo, model_root, **settings))
        with TestClient(app, headers=API_HEADERS) as client:
            # Warm the request path (first-call costs must not eat the deadlines under test).
            client.post(SCORE, json={})
            if clock is not None:
                app.state.guard = ScoringGuard(app.state.settings, clock)
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
    started = time.monotonic()
    response = client.post(SCORE, json=body, headers=headers)
    return response, time.monotonic() - started


@contextmanager
def calls_at_once(
    count: int, call: Callable[[], Any], release: threading.Event
) -> Iterator[queue.Queue[Any]]:
    """``count`` calls at once, one thread each; each answer (or error) is put on the queue as
    it comes. However the block is left, ``release`` lets every hung read go and each thread is
    joined (at most ``JOIN_S``): a failed assertion does not wait for the calls' own ends."""
    answers: queue.Queue[Any] = queue.Queue()

    def one() -> None:
        try:
            answers.put(call())
        except BaseException as exc:
            answers.put(exc)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    try:
        for thread in threads:
            thread.start()
        yield answers
    finally:
        release.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join(JOIN_S)


def next_answer(answers: queue.Queue[Any]) -> Any:
    """The next answer to come (a call that raised fails the test here)."""
    answer = answers.get(timeout=HANG_LIMIT_S)
    assert not isinstance(answer, BaseException), answer
    return answer


def test_a_hung_read_is_cut_at_the_service_deadline_never_later(make_client, valid_body) -> None:
    """The fail policy's answer at the deadline, while the read is still hung; a caller's longer
    deadline is cut to the service's (else the call would have waited for the read)."""
    deadline_s = 2.0
    with make_client(hangs=True, deadline_ms=2000, outage_policy="fail") as client:
        slow = slow_of(client)
        response, elapsed = timed(client, valid_body, **{"X-Deadline-Ms": "600000"})
        assert response.status_code == 503, response.text
        body = response.json()
        assert (body["code"], body["stage"]) == ("feature_store_unavailable", "features")
        assert body["message"] == OUTAGE_MESSAGES["deadline"]
        assert body["request_id"] == response.headers["x-request-id"]
        assert response.headers["retry-after"] == "1"
        assert slow.started == 1 and slow.finished == 0
        assert deadline_s - RESERVE_S <= elapsed < deadline_s + LATE_BOUND_S

        invalid = client.post(SCORE, json=valid_body, headers={"X-Deadline-Ms": "soon"})
        assert invalid.status_code == 422
        assert invalid.json()["message"].startswith("X-Deadline-Ms: ")
        assert slow.started == 1  # refused before any read


def test_a_caller_may_ask_for_a_shorter_deadline(make_client, valid_body) -> None:
    """A minute's service deadline, a caller's half second: answered at the caller's (by the
    policy, or as overloaded when a busy machine made the loop itself run late)."""
    with make_client(hangs=True, deadline_ms=60_000) as client:
        slow = slow_of(client)
        response, elapsed = timed(client, valid_body, **{"X-Deadline-Ms": "500"})
        assert response.status_code == 503, response.text
        assert response.json()["code"] in DEADLINE_CODES
        assert slow.finished == 0
        assert 0.5 - RESERVE_S <= elapsed < 0.5 + LATE_BOUND_S


def test_the_degrade_policy_answers_uncertain(make_client, valid_body) -> None:
    """Degrade: 200, label uncertain, the fallback score, no freshness, on the object and the
    entity routes alike (here for a store that fails its reads at once)."""
    with make_client(
        hangs=False, fails=True, outage_policy="degrade", fallback_score=0.5
    ) as client:
        response = client.post(SCORE, json=valid_body)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == "uncertain"
        assert body["reasons"] == ["feature_store_unavailable"]
        assert body["score"] == 0.5
        assert body["feature_freshness"] == {}
        entity = client.get("/v1/cards/card_0000001/score")
        assert entity.status_code == 200 and entity.json()["label"] == "uncertain"
        assert slow_of(client).started == 2


def test_overload_is_refused_at_once(make_client, valid_body) -> None:
    with make_client(hangs=True, deadline_ms=60_000, max_in_flight=2) as client:
        slow = slow_of(client)
        guard: ScoringGuard = client.app.state.guard  # type: ignore[attr-defined]
        with calls_at_once(6, lambda: timed(client, valid_body)[0], slow.release) as answers:
            # Two calls hold the slots (their reads hang until released); the other four are
            # refused while they do: the refusals come back before any read is let go.
            refused = [next_answer(answers) for _ in range(4)]
            assert guard.in_flight == 2
            assert slow.finished == 0
            slow.release.set()
            admitted = [next_answer(answers) for _ in range(2)]
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
        hangs=True, deadline_ms=500, max_in_flight=1000, breaker_failures=1000
    ) as client:
        slow = slow_of(client)
        calls = pool + 10
        with calls_at_once(calls, lambda: timed(client, valid_body)[0], slow.release) as answers:
            cut = [next_answer(answers) for _ in range(calls)]
            # Every read that started is still hung: none ended to make room for another.
            assert slow.finished == 0
            assert slow.started <= pool
        assert {r.status_code for r in cut} == {503}
        assert {r.json()["code"] for r in cut} <= DEADLINE_CODES
        assert client.app.state.guard.in_flight == 0  # type: ignore[attr-defined]


def test_the_circuit_opens_and_a_trial_after_the_pause_closes_it(make_client, valid_body) -> None:
    """Over HTTP, the guard on a stepped clock: failed reads open the circuit, calls then get
    the policy's answer without a read or a slot, and past the pause the store is read again."""
    now = [1_000.0]
    with make_client(
        hangs=False,
        fails=True,
        clock=lambda: now[0],
        deadline_ms=10_000,
        breaker_failures=2,
        breaker_reset_ms=3_000,
    ) as client:
        app: Any = client.app
        guard: ScoringGuard = app.state.guard
        slow = slow_of(client)
        for _ in range(2):
            failed = client.post(SCORE, json=valid_body)
            assert failed.json()["message"] == "the read timed out"
        assert guard.breaker.is_open and slow.started == 2
        # While open, no read is started: the policy answers at once and takes no slot.
        now[0] += 3.0 - 2**-20
        response = client.post(SCORE, json=valid_body)
        assert response.status_code == 503
        assert response.json()["code"] == "feature_store_unavailable"
        assert response.json()["message"] == OUTAGE_MESSAGES["circuit_open"]
        assert response.headers["retry-after"] == "1"
        assert slow.started == 2 and guard.in_flight == 0
        # The store recovers: at the end of the pause one trial read goes through and closes it.
        del app.dependency_overrides[get_scorer]
        now[0] += 2**-20
        recovered = client.post(SCORE, json=valid_body)
        assert recovered.status_code == 200, recovered.text
        assert not guard.breaker.is_open


def test_model_failure_is_503_model_unavailable(make_client, valid_body) -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    class BrokenSession:
        def run(self, *args: Any, **kwargs: Any) -> Any:
            raise Fail("simulated runtime failure")

    with make_client() as client:
        app: Any = client.app
        app.state.primary.scorer.model.predictor.session = BrokenSession()
        response = client.post(SCORE, json=valid_body)
        assert response.status_code == 503, response.text
        body = response.json()
        assert (body["code"], body["stage"]) == ("model_unavailable", "predict")
        assert "simulated" not in body["message"]
        assert not app.state.guard.breaker.is_open


def test_body_limit(make_client, valid_body) -> None:
    with make_client(max_body_bytes=2048) as client:
        assert client.post(SCORE, json=valid_body).status_code == 200
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
    response = client.post(SCORE, json={**valid_body, **change})
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(f"{field}: ")
