"""Admission: the learned limit, token buckets, quota parsing, request classes, and the
middleware's decisions (priorities, per-key quotas, refusals before the body is read).

The middleware runs in front of a small ASGI app that holds each call open until the test lets
it go, so the calls in flight are exactly the ones the test started; time is a stepped clock.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from scoring_service.api.admission import (
    Admission,
    AdmissionMiddleware,
    Classifier,
    GradientLimit,
    Priority,
    TokenBucket,
    Waiter,
    parse_quotas,
)
from scoring_service.core.security import hash_key
from scoring_service.core.settings import Settings
from tests.fixtures.service import FRAUD_API


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed(
    limit: GradientLimit, clock: Clock, rtt: float, in_flight: int | None, windows: int
) -> None:
    """``windows`` windows of samples of ``rtt``; in flight: the limit itself when None."""
    for _ in range(windows):
        for _ in range(limit.window_samples):
            limit.sample(rtt, limit.value if in_flight is None else in_flight)
        clock.now += limit.window_s * 1.5


def test_limit_grows_while_used_and_latency_holds() -> None:
    clock = Clock()
    limit = GradientLimit(10, 2, 1000, clock=clock)
    feed(limit, clock, 0.004, in_flight=None, windows=20)
    assert limit.value > 20


def test_limit_grows_to_twice_what_is_used_at_most() -> None:
    clock = Clock()
    limit = GradientLimit(10, 2, 1000, clock=clock)
    feed(limit, clock, 0.004, in_flight=10, windows=40)
    assert 10 < limit.value <= 21


def test_limit_stays_when_not_used() -> None:
    clock = Clock()
    limit = GradientLimit(10, 2, 1000, clock=clock)
    feed(limit, clock, 0.004, in_flight=2, windows=20)
    assert limit.value == 10


def test_limit_shrinks_when_latency_climbs_and_stays_in_bounds() -> None:
    clock = Clock()
    limit = GradientLimit(40, 4, 50, clock=clock)
    feed(limit, clock, 0.004, in_flight=None, windows=20)
    assert limit.value == 50  # capped at its maximum
    feed(limit, clock, 0.040, in_flight=50, windows=5)
    shrunk = limit.value
    assert shrunk < 40
    feed(limit, clock, 0.400, in_flight=50, windows=50)
    assert limit.value >= 4
    assert limit.value < shrunk


def test_token_bucket_rate_and_wait() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=2.0, clock=clock)
    assert bucket.take() == 0.0 and bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take() == 0.0


def test_parse_quotas() -> None:
    a, b = hash_key("a"), hash_key("b")
    quotas = parse_quotas(f"{a}=50/0.25, {b.upper()}=/0.5,")
    assert quotas[a].rate == 50 and quotas[a].concurrency_share == 0.25
    assert quotas[b].rate is None and quotas[b].concurrency_share == 0.5
    for bad in ("a=1/1", f"{a}=50", f"{a}=x/1", f"{a}=10/2", f"{a}=0/1"):
        with pytest.raises(ValueError) as caught:
            parse_quotas(bad)
        assert "the key itself" not in str(caught.value)
        assert "a" * 64 not in str(caught.value)


def test_classes_of_routes() -> None:
    classify = Classifier([SimpleNamespace(api=FRAUD_API)])  # type: ignore[list-item]
    entity = FRAUD_API.entity_routes[0].path.split("{")[0] + "10.0.0.1/score"
    assert classify("POST", FRAUD_API.score_path) is Priority.REALTIME
    assert classify("POST", FRAUD_API.batch_path) is Priority.BATCH
    assert classify("GET", "/v1/transactions/t-1/explanation") is Priority.EXPLAIN
    assert classify("GET", entity) is Priority.ENTITY
    for path in ("/health/ready", "/health/live", "/admin/config", "/metrics"):
        assert classify("GET", path) is Priority.ESSENTIAL
    assert classify("GET", "/docs") is Priority.ENTITY


# --- the middleware ------------------------------------------------------------------------------


class Held:
    """An ASGI app that answers 200 when released; counts the body messages it read."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.bodies_read = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.release.wait()
        await receive()
        self.bodies_read += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def call(app: Any, method: str, path: str, key: str | None = "k") -> tuple[int, dict, dict]:
    headers = [(b"x-api-key", key.encode())] if key else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent[0], sent[1]
    headers_out = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers_out, json.loads(body["body"] or b"{}")


def admission(**settings: Any) -> tuple[Admission, Held, AdmissionMiddleware]:
    values = {
        "admission_initial_limit": 8,
        "admission_min_limit": 8,
        "max_in_flight": 8,
        "retry_after_s": 2,
        **settings,
    }
    state = Admission(Settings(**values))
    held = Held()
    classify = Classifier([SimpleNamespace(api=FRAUD_API)])  # type: ignore[list-item]
    return state, held, AdmissionMiddleware(held, state, classify)


async def start(app: Any, method: str, path: str, key: str = "k") -> asyncio.Task:
    task = asyncio.create_task(call(app, method, path, key))
    await asyncio.sleep(0)
    return task


def test_lower_classes_are_shed_first_and_essential_never() -> None:
    async def run() -> None:
        state, held, app = admission()  # shares: batch 0.5, explain 0.35, entity 0.25
        score, batch = FRAUD_API.score_path, FRAUD_API.batch_path
        entity = FRAUD_API.entity_routes[0].path.split("{")[0] + "10.0.0.1/score"
        tasks = [await start(app, "POST", score) for _ in range(2)]
        # What the server's protocol asks before a request becomes an ASGI call.
        assert state.sheds(Priority.ENTITY) and not state.sheds(Priority.BATCH)
        assert not state.sheds(Priority.ESSENTIAL)
        status, headers, body = await call(app, "GET", entity)  # 2 >= 8 * 0.25
        assert status == 503 and body["code"] == "overloaded" and headers["retry-after"] == "2"
        tasks += [await start(app, "POST", batch) for _ in range(2)]  # 2, 3 < 4
        status, _, body = await call(app, "POST", batch)  # 4 >= 8 * 0.5
        assert status == 503 and body["code"] == "overloaded"
        tasks += [await start(app, "POST", score) for _ in range(4)]  # up to 8
        assert state.in_flight == 8
        status, _, body = await call(app, "POST", score)
        assert status == 503 and body["code"] == "overloaded"
        refused_reads = held.bodies_read
        health = await start(app, "GET", "/health/ready")  # never shed
        held.release.set()
        assert (await health)[0] == 200
        assert [(await t)[0] for t in tasks] == [200] * 8
        assert held.bodies_read == refused_reads + 9  # refused calls read no body
        assert state.in_flight == 0

    asyncio.run(run())


def test_a_key_over_its_share_gets_429_and_another_key_none() -> None:
    async def run() -> None:
        noisy, calm = "noisy-key", "calm-key"
        quotas = f"{hash_key(noisy)}=/0.25"
        state, held, app = admission(key_quotas=quotas)
        score = FRAUD_API.score_path
        tasks = [await start(app, "POST", score, noisy) for _ in range(2)]  # 8 * 0.25
        status, headers, body = await call(app, "POST", score, noisy)
        assert status == 429 and body["code"] == "quota_exceeded"
        assert headers["retry-after"] == "2"
        tasks += [await start(app, "POST", score, calm) for _ in range(6)]
        assert state.in_flight == 8
        held.release.set()
        assert [(await t)[0] for t in tasks] == [200] * 8

    asyncio.run(run())


def test_a_key_over_its_rate_gets_429_with_retry_after() -> None:
    async def run() -> None:
        noisy = "noisy-key"
        _, held, app = admission(key_quotas=f"{hash_key(noisy)}=2/")
        held.release.set()
        answers = [await call(app, "POST", FRAUD_API.score_path, noisy) for _ in range(3)]
        assert [status for status, _, _ in answers] == [200, 200, 429]
        _, headers, body = answers[2]
        assert body["code"] == "quota_exceeded" and "2 calls a second" in body["message"]
        assert int(headers["retry-after"]) >= 1
        other = await call(app, "POST", FRAUD_API.score_path, "other-key")
        assert other[0] == 200  # keys without a quota entry: no rate by default

    asyncio.run(run())


def waiter(
    state: Admission, priority: Priority, name: str, log: list[str], expires: float = 1e9
) -> None:
    """A waiting request that notes in ``log`` whether it was started or refused."""
    state.enqueue(
        Waiter(
            priority,
            expires,
            lambda: log.append(f"start {name}") is None,
            lambda: log.append(f"refuse {name}"),
        )
    )


def test_a_freed_slot_goes_to_the_newest_waiting_request_of_the_highest_class() -> None:
    state, _, _ = admission()  # limit 8; batch share 0.5
    state.in_flight = 8
    log: list[str] = []
    for name, priority in [
        ("batch-1", Priority.BATCH),
        ("rt-1", Priority.REALTIME),
        ("rt-2", Priority.REALTIME),
        ("batch-2", Priority.BATCH),
    ]:
        waiter(state, priority, name, log)
    assert state.waiting == 4 and not log
    state.in_flight -= 1
    state.release()
    assert log == ["start rt-2"] and state.in_flight == 8  # counted in flight once started
    state.finished()  # rt-2 ends
    assert log[-1] == "start rt-1"
    state.in_flight = 3  # batch calls may fill up to half the limit, 4
    state.release()
    assert log[-1] == "start batch-2" and state.in_flight == 4 and state.waiting == 1
    state.in_flight = 2
    state.release()
    assert log[-1] == "start batch-1" and state.in_flight == 3
    assert state.waiting == 0


def test_a_request_that_can_no_longer_start_gives_its_slot_on() -> None:
    state, _, _ = admission()
    state.in_flight = 8
    log: list[str] = []
    waiter(state, Priority.REALTIME, "old", log)
    state.enqueue(Waiter(Priority.REALTIME, 1e9, lambda: False, lambda: None))  # client left
    state.in_flight -= 1
    state.release()
    assert log == ["start old"] and state.in_flight == 8 and state.waiting == 0


def test_waits_run_out_and_the_oldest_lowest_make_room() -> None:
    clock = Clock()
    state = Admission(Settings(admission_max_waiting=3), clock=clock)
    state.in_flight = state.limit.value
    log: list[str] = []
    waiter(state, Priority.REALTIME, "rt-short", log, expires=100.01)
    waiter(state, Priority.ENTITY, "entity-1", log, expires=101.0)
    waiter(state, Priority.REALTIME, "rt-long", log, expires=102.0)
    waiter(state, Priority.REALTIME, "rt-new", log, expires=102.0)  # 3 waiting: room made
    assert log == ["refuse entity-1"]
    state.expire(100.02)
    assert log == ["refuse entity-1", "refuse rt-short"] and state.waiting == 2
    state.expire(103.0)
    assert log[-2:] == ["refuse rt-long", "refuse rt-new"] and state.waiting == 0


def test_the_wait_leaves_time_to_score_within_the_deadline() -> None:
    state, _, _ = admission(admission_max_wait_ms=40)
    assert state.wait_budget(None) == pytest.approx(0.040)
    assert state.wait_budget(2.0) == pytest.approx(0.040)
    state.limit.low_rtt = 0.010
    assert state.wait_budget(0.050) == pytest.approx(0.030)  # 50 ms less twice 10 ms
    assert state.wait_budget(0.015) == 0.0  # no time to wait: refused at once
    state, _, _ = admission(admission_max_wait_ms=0)
    assert state.wait_budget(2.0) == 0.0


def test_the_unloaded_latency_falls_at_once_and_rises_slowly() -> None:
    """An overload's queueing raises the long average of latency, not the unloaded latency
    that bounds a request's wait."""
    clock = Clock()
    limit = GradientLimit(8, 4, 64, clock=clock)
    feed(limit, clock, 0.004, None, 5)
    assert limit.low_rtt == pytest.approx(0.004)
    feed(limit, clock, 0.040, None, 60)  # three seconds of queueing: ten times slower
    assert limit.long_rtt is not None and limit.long_rtt > 0.020
    assert limit.low_rtt < 0.010
    feed(limit, clock, 0.003, None, 3)  # a window's average is taken at the next one's start
    assert limit.low_rtt == pytest.approx(0.003)
