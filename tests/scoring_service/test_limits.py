"""Limits: deadlines, outage policy, overload, circuit breaker, body size, model failure.

The store's slowness is played by a scorer that blocks a worker thread before delegating to the
real one, exactly what a hung read does; the deadline is real wall time.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scoring_service.app import create_app
from scoring_service.deps import get_scorer
from scoring_service.errors import FeatureStoreUnavailable
from tests.scoring_service.conftest import API_HEADERS, settings_for

MARGIN_S = 0.15  # test client and scheduling overhead on a busy two-core machine


class SlowScorer:
    """The live scorer behind a read that takes `delay` seconds (a slow or hung store), and
    then fails like a socket timeout when `fails`."""

    def __init__(self, inner: Any, delay: float, fails: bool = False) -> None:
        self.inner = inner
        self.delay = delay
        self.fails = fails
        self.started = 0

    def __getattr__(self, name: str) -> Any:
        # Everything but the read (model, mapping, labels...) is the live scorer's.
        return getattr(self.inner, name)

    def _read(self) -> None:
        self.started += 1
        time.sleep(self.delay)

    async def score(self, mapped: Any) -> Any:
        await asyncio.to_thread(self._read)
        if self.fails:
            raise FeatureStoreUnavailable("the read timed out")
        return await self.inner.score(mapped)


@pytest.fixture()
def make_client(sqlite_repo: Path, model_root: Path) -> Callable[..., Any]:
    """Start an app with some settings; optionally slow its scorer down."""

    @contextmanager
    def start(
        delay: float | None = None, fails: bool = False, **settings: Any
    ) -> Iterator[TestClient]:
        app = create_app(settings_for(sqlite_repo, model_root, **settings))
        with TestClient(app, headers=API_HEADERS) as client:
            # Warm the request path (first-call costs must not eat the deadlines under test).
            client.post("/v1/transactions/score", json={})
            if delay is not None:
                slow = SlowScorer(app.state.scorer, delay, fails)
                app.dependency_overrides[get_scorer] = lambda: slow
            yield client

    return start


def timed(client: TestClient, body: dict, **headers: str) -> tuple[Any, float]:
    started = time.perf_counter()
    response = client.post("/v1/transactions/score", json=body, headers=headers)
    return response, time.perf_counter() - started


def test_deadline_fail_policy(make_client, valid_body) -> None:
    with make_client(delay=0.6, deadline_ms=100, outage_policy="fail") as client:
        response, elapsed = timed(client, valid_body)
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "feature_store_unavailable"
        assert response.json()["stage"] == "features"
        assert response.headers["retry-after"] == "1"
        assert 0.09 <= elapsed < 0.1 + MARGIN_S

        # A caller may ask for less, never for more.
        _, shorter = timed(client, valid_body, **{"X-Deadline-Ms": "20"})
        assert shorter < 0.02 + MARGIN_S
        _, capped = timed(client, valid_body, **{"X-Deadline-Ms": "60000"})
        assert 0.09 <= capped < 0.1 + MARGIN_S

        invalid = client.post(
            "/v1/transactions/score", json=valid_body, headers={"X-Deadline-Ms": "soon"}
        )
        assert invalid.status_code == 422
        assert invalid.json()["message"].startswith("X-Deadline-Ms: ")


def test_deadline_degrade_policy(make_client, valid_body) -> None:
    with make_client(
        delay=0.6, deadline_ms=100, outage_policy="degrade", fallback_score=0.5
    ) as client:
        response, elapsed = timed(client, valid_body)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == "uncertain"
        assert body["reasons"] == ["feature_store_unavailable"]
        assert body["score"] == 0.5
        assert body["feature_freshness"] == {}
        assert elapsed < 0.1 + MARGIN_S
        entity = client.get("/v1/cards/card_0000001/score")
        assert entity.status_code == 200 and entity.json()["label"] == "uncertain"


def test_overload_is_refused_at_once(make_client, valid_body) -> None:
    with (
        make_client(delay=0.5, deadline_ms=3_000, max_in_flight=2) as client,
        ThreadPoolExecutor(6) as pool,
    ):
        results = list(pool.map(lambda _: timed(client, valid_body), range(6)))
    codes = sorted(r.status_code for r, _ in results)
    assert codes == [200, 200, 503, 503, 503, 503], codes
    for response, elapsed in results:
        if response.status_code == 503:
            assert response.json()["code"] == "overloaded"
            assert response.headers["retry-after"] == "1"
            assert elapsed < 0.3  # at once, not after the slow ones


def test_abandoned_work_cannot_pile_up(make_client, valid_body) -> None:
    """Calls cancelled at their deadline: work not started is dropped, and the reads already
    running (threads that cannot be killed) never outnumber the worker pool."""
    pool = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
    with make_client(
        delay=2.0, deadline_ms=20, max_in_flight=1000, breaker_failures=1000
    ) as client:
        slow = client.app.dependency_overrides[get_scorer]()  # type: ignore[attr-defined]
        for _ in range(pool + 10):
            response, _ = timed(client, valid_body)
            # The deadline's answer: the outage policy's, or `overloaded` when the machine
            # itself made the event loop late (what this test checks is the pile-up bound).
            assert response.json()["code"] in ("feature_store_unavailable", "overloaded")
        assert slow.started <= pool
        assert client.app.state.guard.in_flight == 0  # type: ignore[attr-defined]


def test_late_reads_do_not_open_the_circuit(make_client, valid_body) -> None:
    """Reads that are only late (a busy machine: other calls still get their features) answer
    by the policy, but do not open the circuit."""
    with make_client(breaker_failures=2, deadline_ms=30) as client:
        app: Any = client.app
        assert client.post("/v1/transactions/score", json=valid_body).status_code == 200
        slow = SlowScorer(app.state.scorer, 0.1)
        app.dependency_overrides[get_scorer] = lambda: slow
        for _ in range(2):
            response, _ = timed(client, valid_body)
            assert response.json()["code"] == "feature_store_unavailable"
        assert not app.state.guard.breaker.is_open


def test_circuit_opens_and_closes(make_client, valid_body) -> None:
    with make_client(
        delay=0.05, fails=True, deadline_ms=1000, breaker_failures=2, breaker_reset_ms=300
    ) as client:
        app: Any = client.app
        breaker = app.state.guard.breaker
        for _ in range(2):
            timed(client, valid_body)
        assert breaker.is_open
        # While open, no read is started: the answer comes at once and takes no slot.
        response, _ = timed(client, valid_body)
        assert response.json()["code"] == "feature_store_unavailable"
        assert app.state.guard.in_flight <= 2
        # The store recovers: after the pause one trial read goes through and closes it.
        del app.dependency_overrides[get_scorer]
        time.sleep(0.35)
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
        app.state.scorer.model.predictor.session = BrokenSession()
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
