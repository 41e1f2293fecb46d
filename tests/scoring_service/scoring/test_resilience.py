"""Deadlines, the store's circuit breaker and admission, on a clock the test steps.

Every decision of ``scoring_service.scoring.resilience`` (a deadline spent, the circuit open or
due for its trial, a late read counted against the store or not) reads the clock it is given,
so the instants of each transition are exact here and nothing waits them out. The one real wait
is the timeout around a read that hangs: a hundredth of a second, on a deadline whose budget is
long enough that a busy machine cannot turn its answer into ``overloaded``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from scoring_service.core.errors import FeatureStoreUnavailable, Overloaded
from scoring_service.core.security import ARRIVED_AT
from scoring_service.core.settings import Settings
from scoring_service.scoring.resilience import (
    OUTAGE_MESSAGES,
    OUTAGE_REASON,
    RESERVE_S,
    CircuitBreaker,
    Deadline,
    ScoringGuard,
    get_batch_deadline,
    get_deadline,
)
from scoring_service.stages.outcomes import Scored

START = 1_000.0
"""Where a test clock starts; the steps below are binary fractions, so sums are exact."""
HUNG_S = 0.01
"""Real seconds a hung read is given before its deadline cuts it."""
LONG_BUDGET_MS = 10_000
"""Budget of the deadlines a hung read is cut at: the loop would have to run a second late to
make the cut an overload instead of an outage."""


class SteppedClock:
    """A monotonic clock that moves only when the test steps it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


def settings(**changes: Any) -> Settings:
    return Settings(**changes)


class Work:
    """A read the guard runs: answers ``result``, raises ``error``, or hangs until set free.
    ``takes_s`` steps the test clock while it runs (a read that takes that long)."""

    def __init__(
        self,
        clock: SteppedClock,
        *,
        result: Any = "scored",
        error: BaseException | None = None,
        hangs: bool = False,
        takes_s: float = 0.0,
    ) -> None:
        self.clock = clock
        self.result = result
        self.error = error
        self.hangs = hangs
        self.takes_s = takes_s
        self.calls = 0
        self.free = asyncio.Event() if hangs else None

    async def __call__(self) -> Any:
        self.calls += 1
        if self.free is not None:
            await self.free.wait()
        self.clock.step(self.takes_s)
        if self.error is not None:
            raise self.error
        return self.result


def run(
    guard: ScoringGuard,
    work: Callable[[], Awaitable[Any]],
    deadline: Deadline,
    *,
    holds_slot: bool = False,
) -> Any:
    """The guard's answer to one call of n=2 requests (its refusal is returned, not raised)."""

    async def call() -> Any:
        try:
            return await guard.run(work, 2, deadline, holds_slot=holds_slot)
        except (FeatureStoreUnavailable, Overloaded) as exc:
            return exc

    return asyncio.run(call())


def ahead(clock: SteppedClock, seconds: float, budget_ms: int | None = None) -> Deadline:
    """A deadline ``seconds`` of work from now on ``clock`` (plus the reserve kept back)."""
    budget = budget_ms if budget_ms is not None else int(seconds * 1000)
    return Deadline(clock() + seconds + RESERVE_S, budget, clock)


def degraded(n: int, score: float | None) -> list[Scored]:
    return [
        Scored(score=score, label="uncertain", reasons=[OUTAGE_REASON], freshness={})
        for _ in range(n)
    ]


def assert_outage(answer: Any, message: str, retry_after: str = "1") -> None:
    """The fail policy's answer: 503 feature_store_unavailable at the features stage."""
    assert isinstance(answer, FeatureStoreUnavailable), answer
    assert (answer.status_code, answer.code, answer.stage) == (
        503,
        "feature_store_unavailable",
        "features",
    )
    assert answer.message == message
    assert answer.headers == {"Retry-After": retry_after}


# --- deadlines ----------------------------------------------------------------------------------


def test_a_deadline_counts_down_on_its_clock_keeping_back_the_reserve() -> None:
    clock = SteppedClock()
    deadline = Deadline(START + 0.5, 500, clock)
    assert deadline.remaining() == pytest.approx(0.5 - RESERVE_S, abs=1e-12)
    clock.step(0.25)
    assert deadline.remaining() == pytest.approx(0.25 - RESERVE_S, abs=1e-12)
    clock.step(0.25 - RESERVE_S)
    # Spent: what is left is the time kept back to write the answer.
    assert deadline.remaining() == pytest.approx(0.0, abs=1e-12)
    clock.step(0.5)
    assert deadline.remaining() == pytest.approx(-0.5, abs=1e-12)
    # The clock is not part of the value.
    assert deadline == Deadline(START + 0.5, 500)


def request_at(arrived: float | None, deadline_ms: int, batch_deadline_ms: int) -> Request:
    """A request that arrived at ``arrived`` (time.monotonic() seconds) to an app with these
    deadlines; None: no arrival stamp."""
    limits = settings(deadline_ms=deadline_ms, batch_deadline_ms=batch_deadline_ms)
    app = SimpleNamespace(state=SimpleNamespace(settings=limits))
    scope: dict[str, Any] = {"type": "http", "app": app, "headers": []}
    if arrived is not None:
        scope[ARRIVED_AT] = arrived
    return Request(scope)


@pytest.mark.parametrize(
    ("asked_ms", "budget_ms"),
    [(None, 300), (100, 100), (300, 300), (301, 300), (600_000, 300)],
)
def test_a_caller_may_shorten_the_deadline_never_lengthen_it(
    asked_ms: int | None, budget_ms: int
) -> None:
    request = request_at(50.0, deadline_ms=300, batch_deadline_ms=2_000)
    deadline = asyncio.run(get_deadline(request, asked_ms))
    assert (deadline.expires_at, deadline.budget_ms) == (50.0 + budget_ms / 1000, budget_ms)


@pytest.mark.parametrize(
    ("asked_ms", "budget_ms"), [(None, 2_000), (250, 250), (2_001, 2_000), (600_000, 2_000)]
)
def test_a_batch_deadline_is_the_batch_budget_from_arrival(
    asked_ms: int | None, budget_ms: int
) -> None:
    request = request_at(50.0, deadline_ms=300, batch_deadline_ms=2_000)
    deadline = asyncio.run(get_batch_deadline(request, asked_ms))
    assert (deadline.expires_at, deadline.budget_ms) == (50.0 + budget_ms / 1000, budget_ms)


def test_without_an_arrival_stamp_a_deadline_counts_from_now() -> None:
    before = time.monotonic()
    deadline = asyncio.run(get_deadline(request_at(None, 300, 2_000), None))
    after = time.monotonic()
    assert before <= deadline.expires_at - 0.3 <= after


# --- the circuit breaker ------------------------------------------------------------------------


def test_the_circuit_opens_after_n_consecutive_failures_only() -> None:
    clock = SteppedClock()
    breaker = CircuitBreaker(failures=3, reset_s=2.0, clock=clock)
    assert breaker.last_success == START
    for _ in range(2):
        breaker.failed()
    assert not breaker.is_open and breaker.allow()
    clock.step(0.5)
    breaker.succeeded()  # a success in between: the count starts again
    assert (breaker.failures, breaker.last_success) == (0, START + 0.5)
    for _ in range(2):
        breaker.failed()
    assert not breaker.is_open
    clock.step(0.25)
    breaker.failed()
    assert breaker.is_open
    assert breaker.opened_at == START + 0.75
    assert not breaker.allow()


def test_open_then_half_open_at_the_reset_instant_then_closed_by_one_trial() -> None:
    clock = SteppedClock()
    breaker = CircuitBreaker(failures=1, reset_s=2.0, clock=clock)
    breaker.failed()
    assert breaker.is_open and breaker.opened_at == START
    clock.step(1.5)
    assert not breaker.allow()  # open: 1.5 s of a 2 s pause
    clock.step(0.5 - 2**-20)
    assert not breaker.allow()  # still open just before the reset instant
    clock.step(2**-20)
    assert breaker.allow()  # half-open at exactly reset_s: this call is the trial
    assert breaker.trial_out and breaker.is_open
    assert not breaker.allow()  # one trial at a time
    clock.step(0.125)
    breaker.succeeded()  # the trial got its answer: closed
    assert not breaker.is_open and not breaker.trial_out
    assert (breaker.failures, breaker.last_success) == (0, START + 2.125)
    assert breaker.allow() and breaker.allow()


def test_a_failed_trial_reopens_for_a_full_pause_from_its_failure() -> None:
    clock = SteppedClock()
    breaker = CircuitBreaker(failures=1, reset_s=2.0, clock=clock)
    breaker.failed()
    clock.step(2.0)
    assert breaker.allow()  # the trial
    clock.step(0.25)
    breaker.failed()  # ...fails
    assert breaker.is_open and breaker.opened_at == START + 2.25 and not breaker.trial_out
    clock.step(1.75)
    assert not breaker.allow()  # 2 s after the first opening, only 1.75 s after the trial
    clock.step(0.25)
    assert breaker.allow()


# --- admission ----------------------------------------------------------------------------------


def test_admission_takes_slots_up_to_the_limit_then_refuses_at_once() -> None:
    guard = ScoringGuard(settings(max_in_flight=2, retry_after_s=7), SteppedClock())
    assert guard.admit() and guard.admit()
    with pytest.raises(Overloaded) as refused:
        guard.admit()
    error = refused.value
    assert (error.status_code, error.code, error.stage) == (503, "overloaded", "service")
    assert error.message == ("The service has 2 scoring calls in flight, its limit; retry shortly.")
    assert error.headers == {"Retry-After": "7"}
    assert guard.in_flight == 2
    guard.release()
    assert guard.admit() and guard.in_flight == 2


def test_an_open_circuit_admits_a_call_without_a_slot() -> None:
    """During an outage the policy answers without a read: no slot, and no overload."""
    guard = ScoringGuard(settings(max_in_flight=1, breaker_failures=1), SteppedClock())
    assert guard.admit()
    guard.breaker.failed()
    assert guard.admit() is False
    assert guard.in_flight == 1


def test_a_call_without_a_slot_is_refused_when_none_is_free() -> None:
    clock = SteppedClock()
    guard = ScoringGuard(settings(max_in_flight=1), clock)
    assert guard.admit()
    work = Work(clock)
    answer = run(guard, work, ahead(clock, 1.0))
    assert isinstance(answer, Overloaded) and answer.headers == {"Retry-After": "1"}
    assert work.calls == 0 and guard.in_flight == 1
    # A call that took its slot at arrival runs.
    assert run(guard, work, ahead(clock, 1.0), holds_slot=True) == "scored"
    assert guard.in_flight == 1


def test_a_slot_is_held_while_the_work_runs_and_given_back_after() -> None:
    clock = SteppedClock()
    guard = ScoringGuard(settings(), clock)
    seen: list[int] = []

    async def work() -> str:
        seen.append(guard.in_flight)
        return "scored"

    assert run(guard, work, ahead(clock, 1.0)) == "scored"
    assert seen == [1] and guard.in_flight == 0
    with pytest.raises(RuntimeError):
        asyncio.run(guard.run(Work(clock, error=RuntimeError("model")), 1, ahead(clock, 1.0)))
    assert guard.in_flight == 0


# --- the guard: deadline, outage policy, breaker ------------------------------------------------


def test_a_deadline_spent_before_the_read_answers_by_the_policy_without_a_read() -> None:
    clock = SteppedClock()
    guard = ScoringGuard(settings(breaker_failures=1), clock)
    work = Work(clock)
    deadline = ahead(clock, 0.5)
    clock.step(0.5)  # e.g. a slow upload: nothing left when the read would start
    assert_outage(run(guard, work, deadline), OUTAGE_MESSAGES["deadline"])
    assert work.calls == 0
    assert not guard.breaker.is_open and guard.in_flight == 0  # not the store's failure


def test_the_degrade_policy_answers_uncertain_with_the_fallback_score() -> None:
    clock = SteppedClock()
    guard = ScoringGuard(settings(outage_policy="degrade", fallback_score=0.25), clock)
    deadline = ahead(clock, 0.5)
    clock.step(1.0)
    assert run(guard, Work(clock), deadline) == degraded(2, 0.25)
    error = FeatureStoreUnavailable("the read timed out")
    assert run(guard, Work(clock, error=error), ahead(clock, 0.5)) == degraded(2, 0.25)
    unscored = ScoringGuard(settings(outage_policy="degrade"), clock)
    assert run(unscored, Work(clock, error=error), ahead(clock, 0.5)) == degraded(2, None)


def test_store_errors_open_the_circuit_and_one_trial_after_the_pause_closes_it() -> None:
    clock = SteppedClock()
    guard = ScoringGuard(settings(breaker_failures=2, breaker_reset_ms=3_000), clock)
    failing = Work(clock, error=FeatureStoreUnavailable("the read timed out"))
    # The store's own error is the answer while the circuit is closed.
    assert_outage(run(guard, failing, ahead(clock, 1.0)), "the read timed out")
    assert not guard.breaker.is_open
    clock.step(0.25)
    assert_outage(run(guard, failing, ahead(clock, 1.0)), "the read timed out")
    assert guard.breaker.is_open and guard.breaker.opened_at == START + 0.25
    # Open: the policy answers at once, no read, no slot.
    healthy = Work(clock)
    clock.step(3.0 - 2**-20)
    assert_outage(run(guard, healthy, ahead(clock, 1.0)), OUTAGE_MESSAGES["circuit_open"])
    assert healthy.calls == 0 and guard.in_flight == 0
    # At the reset instant one trial read goes through; its answer closes the circuit.
    clock.step(2**-20)
    assert run(guard, healthy, ahead(clock, 1.0)) == "scored"
    assert healthy.calls == 1 and not guard.breaker.is_open
    assert run(guard, healthy, ahead(clock, 1.0)) == "scored"


def test_while_the_trial_is_out_other_calls_get_the_policy_at_once() -> None:
    clock = SteppedClock()
    guard = ScoringGuard(settings(breaker_failures=1, breaker_reset_ms=1_000), clock)
    guard.breaker.failed()
    clock.step(1.0)
    trial = Work(clock, hangs=True)
    other = Work(clock)

    async def scenario() -> tuple[FeatureStoreUnavailable, Any]:
        running = asyncio.create_task(guard.run(trial, 1, ahead(clock, 60.0)))
        while not trial.calls:
            await asyncio.sleep(0)
        with pytest.raises(FeatureStoreUnavailable) as refused:
            await guard.run(other, 1, ahead(clock, 1.0))
        assert trial.free is not None
        trial.free.set()
        return refused.value, await running

    refused, answered = asyncio.run(scenario())
    assert_outage(refused, OUTAGE_MESSAGES["circuit_open"])
    assert other.calls == 0
    assert answered == "scored" and not guard.breaker.is_open


def test_a_cancelled_trial_lets_the_next_call_be_the_trial() -> None:
    clock = SteppedClock()
    guard = ScoringGuard(settings(breaker_failures=1, breaker_reset_ms=1_000), clock)
    guard.breaker.failed()
    clock.step(1.0)
    trial = Work(clock, hangs=True)

    async def scenario() -> None:
        running = asyncio.create_task(guard.run(trial, 1, ahead(clock, 60.0)))
        while not trial.calls:
            await asyncio.sleep(0)
        running.cancel()  # the caller went away: the outcome is unknown
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(scenario())
    assert guard.breaker.is_open and not guard.breaker.trial_out
    assert run(guard, Work(clock), ahead(clock, 1.0)) == "scored"
    assert not guard.breaker.is_open


def test_a_late_read_counts_against_the_store_only_when_no_call_got_features_for_a_while() -> None:
    """Deadline overruns while other calls still get their features (within breaker_reset_ms
    of the last success) are a busy machine: answered by the policy, the circuit left closed.
    Past that window with no success, an overrun is a hung store's failure."""
    clock = SteppedClock()
    guard = ScoringGuard(settings(breaker_failures=1, breaker_reset_ms=5_000), clock)
    assert run(guard, Work(clock), ahead(clock, 1.0)) == "scored"  # features at START

    def overrun() -> Any:
        return run(guard, Work(clock, hangs=True), ahead(clock, HUNG_S, LONG_BUDGET_MS))

    assert_outage(overrun(), OUTAGE_MESSAGES["deadline"])
    assert not guard.breaker.is_open
    clock.step(5.0)
    assert_outage(overrun(), OUTAGE_MESSAGES["deadline"])  # exactly the window: still busy
    assert not guard.breaker.is_open
    clock.step(2**-20)
    assert_outage(overrun(), OUTAGE_MESSAGES["deadline"])
    assert guard.breaker.is_open and guard.breaker.opened_at == START + 5.0 + 2**-20


def test_a_read_that_finishes_late_on_the_clock_still_answers() -> None:
    """Only the cut decides: a read that returns before the real timeout is the answer, and
    it counts as the store's success."""
    clock = SteppedClock()
    guard = ScoringGuard(settings(), clock)
    slow = Work(clock, takes_s=30.0)
    assert run(guard, slow, ahead(clock, 1.0)) == "scored"
    assert guard.breaker.last_success == START + 30.0


@pytest.mark.parametrize(
    ("lag_s", "busy"), [(1.0, True), (1.0 - 2**-20, False)], ids=["late", "in-time"]
)
def test_a_deadline_missed_on_a_late_loop_is_overload_not_an_outage(
    lag_s: float, busy: bool
) -> None:
    """The loop running late by a tenth of the budget or more: 503 overloaded with Retry-After,
    and the store is not blamed; less, and the outage policy answers."""
    clock = SteppedClock()
    guard = ScoringGuard(settings(breaker_failures=1, breaker_reset_ms=1_000), clock)
    clock.step(60.0)  # no call has got its features for a minute: a miss would count
    guard.lag.seconds = lag_s  # the sampler is not running outside admit(): it stays put
    answer = run(guard, Work(clock, hangs=True), ahead(clock, HUNG_S, LONG_BUDGET_MS))
    if busy:
        assert isinstance(answer, Overloaded), answer
        assert answer.message == (
            "The service is too busy to answer within the deadline; retry shortly."
        )
        assert answer.headers == {"Retry-After": "1"}
        assert not guard.breaker.is_open
    else:
        assert_outage(answer, OUTAGE_MESSAGES["deadline"])
        assert guard.breaker.is_open
    # Spent before the read, the same rule.
    guard = ScoringGuard(settings(), clock)
    guard.lag.seconds = lag_s
    deadline = ahead(clock, 0.0, LONG_BUDGET_MS)
    answer = run(guard, Work(clock), deadline)
    assert isinstance(answer, Overloaded if busy else FeatureStoreUnavailable), answer


def test_a_model_failure_is_not_the_stores() -> None:
    """An error that is not the store's (the model's, after a read) propagates and counts as a
    read that worked: it closes a half-open circuit instead of holding it open."""
    clock = SteppedClock()
    guard = ScoringGuard(settings(breaker_failures=2), clock)
    guard.breaker.failed()
    broken = Work(clock, error=RuntimeError("session failed"))
    with pytest.raises(RuntimeError, match="session failed"):
        asyncio.run(guard.run(broken, 1, ahead(clock, 1.0)))
    assert guard.breaker.failures == 0 and not guard.breaker.is_open
