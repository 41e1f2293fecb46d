"""Answer in time whatever the online store does: deadlines, outage policy, overload.

Every scoring request has a deadline (``deadline_ms``; ``batch_deadline_ms`` for batch calls;
a caller may ask for less through ``X-Deadline-Ms``), counted from its arrival.
``ScoringGuard.score`` wraps the scorer from the outside:

- **Overload.** At most ``max_in_flight`` scoring calls are admitted at once; past it, 503
  ``overloaded`` at once instead of unbounded latency. The score routes take their slot at
  arrival (``admit``), before the body is read, so a refusal costs next to nothing.
- **Deadline and outage policy.** A read that fails, or does not finish within the deadline,
  gets the configured policy's answer: ``fail`` (503 ``feature_store_unavailable`` with
  Retry-After) or ``degrade`` (label ``uncertain``, reason ``feature_store_unavailable``,
  score ``fallback_score``). At the deadline the call is cancelled, so work that has not started
  (a queued thread, a micro-batch waiter) is never done for a caller who is gone. A read already
  running in a thread cannot be killed: it ends with the store's socket timeout, and there are
  never more such threads than the worker pool holds, so abandoned work cannot pile up.
- **Store-free fallback.** When the deployment's fallback chain has a step that reads nothing
  from the store (``Scorer.answers_unread``), a read that misses its deadline, or a circuit
  that is open, goes down that chain as a read that failed does: the read is cut
  ``UNREAD_SHARE`` of the budget early and the store-free step answers 200 in the time left;
  only where no step answers does the outage policy.
- **Busy, not down.** A deadline missed while the event loop itself runs late (by a tenth
  of the budget or more: the service is saturated) is answered 503 ``overloaded`` and does not
  count against the store.
- **Circuit breaker.** After ``breaker_failures`` consecutive failed reads (errors, or deadline
  overruns while no call at all has got its features for ``breaker_reset_ms``: a hung store,
  not a busy machine) the circuit opens: requests get the policy's answer at once, without
  touching the store, and after ``breaker_reset_ms`` one trial read goes through and closes it
  again on success.

Model failures are not store failures: they stay 503 ``model_unavailable``.

Time: every decision (a deadline spent, the circuit open or due for its trial, a read late while
others still get their features) reads a monotonic ``Clock``, ``time.monotonic`` unless another
is passed in (a test steps its own). A ``Deadline`` carries the clock its instant is on (the
service stamps arrivals with ``time.monotonic``); the guard's clock times the breaker and how
long no call has got its features. Waiting itself (the timeout around a read, the loop-lag
sampler) stays on the event loop's real time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Header, Request
from feast import FeatureStore
from prometheus_client import Counter, Gauge
from pydantic import WithJsonSchema

from scoring_service.core.errors import FeatureStoreUnavailable, Overloaded
from scoring_service.core.security import ARRIVED_AT
from scoring_service.core.settings import Settings
from scoring_service.stages.mapping import MappedRequests
from scoring_service.stages.outcomes import Scored

logger = logging.getLogger(__name__)

R = TypeVar("R")

Clock = Callable[[], float]
"""A monotonic clock in seconds: ``time.monotonic`` in the service."""

DEADLINE_HEADER = "X-Deadline-Ms"
RESERVE_S = 0.002
"""Kept back from every deadline to write the answer."""
UNREAD_SHARE = 0.2
"""Share of the budget kept back from the feature read when a store-free fallback step can
answer instead: a read cut there leaves the fallback time to answer within the deadline."""

OUTAGE_REASON = "feature_store_unavailable"
OUTAGE_MESSAGES = {
    "deadline": "The online feature store did not answer within the deadline; retry shortly.",
    "circuit_open": "The online feature store is failing; reads are paused for a moment, "
    "retry shortly.",
}

OUTAGE_ANSWERS = Counter(
    "scoring_outage_answers_total",
    "Requests answered by the outage policy instead of a model score.",
    ["policy", "cause"],
)
FALLBACK_ANSWERS = Counter(
    "scoring_unread_fallback_answers_total",
    "Requests answered by a deployment's store-free fallback step because the store's read "
    "missed its deadline or the circuit was open.",
    ["cause"],
)
# Summed over live worker processes when metrics are shared between them (multiprocess mode).
IN_FLIGHT = Gauge(
    "scoring_in_flight",
    "Scoring calls admitted whose answer has not left yet.",
    multiprocess_mode="livesum",
)
CIRCUIT_OPEN = Gauge(
    "scoring_store_circuit_open",
    "1 while the online-store circuit is open (in any worker process).",
    multiprocess_mode="livemax",
)


@dataclass(frozen=True)
class Deadline:
    """When a request must have its answer (``clock`` seconds: time.monotonic() by default)."""

    expires_at: float
    budget_ms: int
    clock: Clock = field(default=time.monotonic, compare=False, repr=False)

    def remaining(self) -> float:
        """Seconds left to do work, keeping back time to write the answer."""
        return self.expires_at - self.clock() - RESERVE_S


MAX_DEADLINE_MS = 600_000
"""Largest X-Deadline-Ms a caller may send."""

DeadlineHeader = Annotated[
    int | None,
    Header(
        alias=DEADLINE_HEADER,
        ge=1,
        le=MAX_DEADLINE_MS,
        description="Ask for a shorter deadline than the service's (milliseconds); a longer "
        "one is cut to the service's own.",
    ),
    # Optional, but never null: a header is absent or holds a whole number.
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_DEADLINE_MS}),
]


def _deadline(request: Request, limit_ms: int, asked_ms: int | None) -> Deadline:
    budget = min(asked_ms or limit_ms, limit_ms)
    arrived = request.scope.get(ARRIVED_AT, time.monotonic())
    return Deadline(expires_at=arrived + budget / 1000, budget_ms=budget)


async def get_deadline(request: Request, x_deadline_ms: DeadlineHeader = None) -> Deadline:
    """A request's deadline: deadline_ms, or the caller's shorter one, from arrival."""
    settings: Settings = request.app.state.settings
    return _deadline(request, settings.deadline_ms, x_deadline_ms)


async def get_batch_deadline(request: Request, x_deadline_ms: DeadlineHeader = None) -> Deadline:
    """A batch call's deadline: batch_deadline_ms, or the caller's shorter one."""
    settings: Settings = request.app.state.settings
    return _deadline(request, settings.batch_deadline_ms, x_deadline_ms)


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> one trial after a pause -> closed.

    Open from the instant of the failure that opened it (or of a failed trial) until
    ``reset_s`` later on ``clock``; from then the first call allowed is the trial (half-open).
    """

    def __init__(self, failures: int, reset_s: float, clock: Clock = time.monotonic) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_out = False
        self.last_success = clock()

    @property
    def is_open(self) -> bool:
        """True while calls are being short-circuited."""
        return self.opened_at is not None

    def allow(self) -> bool:
        """Whether a call may go to the store now."""
        if self.opened_at is None:
            return True
        if self.trial_out or self.clock() - self.opened_at < self.reset_s:
            return False
        self.trial_out = True  # half-open: exactly one trial at a time
        return True

    def succeeded(self) -> None:
        """A call reached the store and got its answer."""
        if self.opened_at is not None:
            logger.info("online store answers again; circuit closed")
        self.last_success = self.clock()
        self.failures = 0
        self.opened_at = None
        self.trial_out = False
        CIRCUIT_OPEN.set(0)

    def failed(self) -> None:
        """A call failed or overran its deadline."""
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.threshold:
            if self.opened_at is None:
                logger.warning("online store failed %d times in a row; circuit open", self.failures)
            self.opened_at = self.clock()
            self.trial_out = False
            CIRCUIT_OPEN.set(1)


class LoopLag:
    """How late the event loop runs a timer it set itself (sampled every ``every_s``, the
    worst recent sample decaying by ``decay`` a sample): near zero on a service that keeps up,
    about one loop iteration's work when it is saturated."""

    def __init__(self, every_s: float = 0.005, decay: float = 0.8) -> None:
        self.every_s = every_s
        self.decay = decay
        self.seconds = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0

    def watch(self) -> None:
        """Sample the running loop (from its first call on; again after a change of loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # called outside a loop (a test, a thread): nothing to watch
        if loop is not self._loop:
            self._loop, self.seconds = loop, 0.0
            self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self.every_s
        loop.call_at(self._due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return  # a loop this watcher left
        self.seconds = max(loop.time() - self._due, self.seconds * self.decay)
        self._schedule(loop)


class ScoringGuard:
    """Admission, deadline and outage policy around ``scorer.score``.

    ``clock`` times the circuit breaker and tells a hung store from a busy machine; each
    deadline given to ``run`` is counted on its own clock.
    """

    def __init__(self, settings: Settings, clock: Clock = time.monotonic) -> None:
        self.policy = settings.outage_policy
        self.fallback_score = settings.fallback_score
        self.retry_after = str(settings.retry_after_s)
        self.max_in_flight = settings.max_in_flight
        self.in_flight = 0
        self.clock = clock
        self.breaker = CircuitBreaker(
            settings.breaker_failures, settings.breaker_reset_ms / 1000, clock
        )
        self.lag = LoopLag()

    def admit(self) -> bool:
        """Take an in-flight slot at a call's arrival, before its body is read.

        True when a slot was taken: give it back with ``release`` when the call ends. Past
        ``max_in_flight`` the call is refused at once, 503 ``overloaded``, unless the circuit
        is open: the outage policy then answers without a read, so the call needs no slot
        (False), and an outage is not reported as overload.
        """
        self.lag.watch()
        if self.in_flight < self.max_in_flight:
            self._acquire()
            return True
        if self.breaker.is_open:
            return False
        raise self._overloaded()

    def release(self) -> None:
        """Give back a slot taken by ``admit``."""
        self._release()

    async def score(
        self, scorer: Any, mapped: MappedRequests, deadline: Deadline, *, holds_slot: bool = False
    ) -> list[Scored]:
        """Score within the deadline, or answer by the deployment's store-free fallback, or by
        the outage policy; 503 when overloaded."""
        n = mapped.request_values.shape[0]
        unread = None
        if getattr(scorer, "answers_unread", False):

            def unread() -> list[Scored]:
                return scorer.score_unread(mapped)  # type: ignore[no-any-return]

        return await self.run(
            lambda: scorer.score(mapped), n, deadline, holds_slot=holds_slot, unread=unread
        )

    async def run(
        self,
        work: Callable[[], Awaitable[R]],
        n: int,
        deadline: Deadline,
        *,
        holds_slot: bool = False,
        unread: Callable[[], list[Scored]] | None = None,
    ) -> R | list[Scored]:
        """Run scoring work on n requests within the deadline, or answer by the outage policy.

        ``holds_slot``: the call took its in-flight slot at arrival (``admit``); otherwise one
        is taken here, and 503 ``overloaded`` when none is free. ``unread``: answers without
        the store (a deployment's store-free fallback steps); when given, the read is cut
        ``UNREAD_SHARE`` of the budget early, and a read cut at its deadline, or a circuit
        open, is answered by it, as a read that failed is, before the outage policy.
        """
        # An open circuit answers by the policy first: during an outage callers get the
        # policy's answer, not "overloaded" because abandoned reads still hold their slots.
        if not self.breaker.allow():
            return self._unread_or_outage(n, "circuit_open", unread)
        if not holds_slot and self.in_flight >= self.max_in_flight:
            self.breaker.trial_out = False
            raise self._overloaded()
        timeout = deadline.remaining()
        if unread is not None:
            timeout -= deadline.budget_ms * UNREAD_SHARE / 1000
        if timeout <= 0:
            # Spent before any read (e.g. a slow upload, or a busy service): no read is tried.
            self.breaker.trial_out = False
            if unread is None:
                self._raise_if_busy(deadline)
            return self._unread_or_outage(n, "deadline", unread)
        if not holds_slot:
            self._acquire()
        try:
            # At the deadline the call is cancelled: work not started yet (a queued thread, a
            # micro-batch waiter) is dropped; a read already running in a thread ends with its
            # socket timeout, and such threads are bounded by the worker pool. (A timeout
            # context cancels this task in place: no task is created per call.)
            async with asyncio.timeout(timeout):
                results = await work()
        except TimeoutError:
            if unread is None:
                self._raise_if_busy(deadline)
            if self.lag.seconds < deadline.budget_ms / 10_000:
                self._overran()  # a busy loop's miss is not the store's failure
            else:
                self.breaker.trial_out = False
            return self._unread_or_outage(n, "deadline", unread)
        except FeatureStoreUnavailable as exc:
            self.breaker.failed()
            return self._outage(n, "store_error", exc)
        except asyncio.CancelledError:
            self.breaker.trial_out = False  # outcome unknown: let another call be the trial
            raise
        except Exception:
            self.breaker.succeeded()  # not the store's failure (e.g. the model's, after a read)
            raise
        finally:
            if not holds_slot:
                self._release()
        self.breaker.succeeded()
        return results

    def _raise_if_busy(self, deadline: Deadline) -> None:
        """A deadline missed while the event loop itself runs late (a tenth of the budget or
        more: a call needs several turns of the loop) is the service's overload, not the
        store's failure: 503 ``overloaded``, and the circuit is left alone. Under a flood,
        counting such misses as store failures opened the circuit and turned every answer into
        feature_store_unavailable."""
        if self.lag.seconds >= deadline.budget_ms / 10_000:
            self.breaker.trial_out = False
            raise Overloaded(
                "The service is too busy to answer within the deadline; retry shortly.",
                headers={"Retry-After": self.retry_after},
            )

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"The service has {self.max_in_flight} scoring calls in flight, its limit; "
            "retry shortly.",
            headers={"Retry-After": self.retry_after},
        )

    def _acquire(self) -> None:
        self.in_flight += 1
        IN_FLIGHT.set(self.in_flight)

    def _release(self) -> None:
        self.in_flight -= 1
        IN_FLIGHT.set(self.in_flight)

    def _overran(self) -> None:
        """A call missed its deadline. That is a store failure only when no call has got its
        features for a while (a hung store); on a merely busy machine others still do."""
        if self.clock() - self.breaker.last_success > self.breaker.reset_s:
            self.breaker.failed()
        else:
            self.breaker.trial_out = False

    def _unread_or_outage(
        self, n: int, cause: str, unread: Callable[[], list[Scored]] | None
    ) -> list[Scored]:
        """The store-free fallback's answers where the deployment has one that answers, else
        the outage policy's."""
        if unread is not None:
            try:
                answers = unread()
            except FeatureStoreUnavailable:
                pass  # no fallback step could answer these rows without the store
            else:
                FALLBACK_ANSWERS.labels(cause).inc()
                return answers
        return self._outage(n, cause, None)

    def _outage(self, n: int, cause: str, exc: FeatureStoreUnavailable | None) -> list[Scored]:
        OUTAGE_ANSWERS.labels(self.policy, cause).inc()
        if self.policy == "fail":
            message = exc.message if exc is not None else OUTAGE_MESSAGES[cause]
            raise FeatureStoreUnavailable(
                message, headers={"Retry-After": self.retry_after}
            ) from exc
        return [
            Scored(
                score=self.fallback_score, label="uncertain", reasons=[OUTAGE_REASON], freshness={}
            )
            for _ in range(n)
        ]


def configure_online_store(store: FeatureStore, settings: Settings) -> None:
    """Give Feast's own Redis client the service's timeouts and pool bound.

    Feast builds that client from its connection string, passing ``key=value`` items to
    redis-py (JSON-decoded), so the options go there; ones the operator already wrote win.
    """
    config = store.config.online_store
    if getattr(config, "type", None) != "redis":
        return
    redis_type = str(getattr(config.redis_type, "value", config.redis_type))
    if redis_type not in ("redis", "redis_cluster"):
        return
    parts = config.connection_string.split(",")
    present = {part.split("=", 1)[0].strip() for part in parts if "=" in part}
    extra = [
        f"{key}={'null' if value is None else value}"
        for key, value in settings.store_connection.redis_py_options(redis_type).items()
        if key not in present
    ]
    config.connection_string = ",".join([*parts, *extra])
