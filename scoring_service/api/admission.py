"""Admission: which requests the service takes on when more arrive than it can answer in time.

``AdmissionMiddleware`` is pure ASGI and decides from the method, the path and the headers alone,
before one byte of a body is read, so a refusal costs next to nothing:

- **Priorities.** Each request has a class (``classify``): admin, health and metrics are
  ``ESSENTIAL`` and never shed; real-time score calls (``POST /v1/<resource>/score``) are shed
  last; then batch scoring, explanations and entity routes, shed first. A class is admitted
  while the calls in flight are fewer than its share of the concurrency limit
  (``SCORING_ADMISSION_SHARES``): real-time calls may fill the whole limit, entity calls only a
  quarter of it by default, so under a rising load the low classes are refused first and the
  real-time calls keep the capacity.
- **Adaptive concurrency limit.** The limit is learned from the latency of real-time calls
  (``GradientLimit``, the Gradient2 rule of Netflix's concurrency-limits): while their recent
  latency stays near its long-run average the limit grows by about its square root per window;
  when the recent latency climbs above it (a queue forming) the limit shrinks in proportion,
  so calls wait in the service for little longer than they take.
- **Per-key quotas.** Each API key has a rate (a token bucket) and a share of the limit it may
  hold in flight (``SCORING_KEY_QUOTAS``, next to the key hashes; keys without an entry get
  ``SCORING_KEY_RATE`` and ``SCORING_KEY_CONCURRENCY_SHARE``). Past either, 429
  ``quota_exceeded`` with Retry-After: one key flooding the service is refused on its own
  account, and cannot take the slots another key's real-time calls need.

- **A short wait for a slot, newest first.** A request that arrives at its class's limit
  waits for a slot (``Admission.enqueue``, from the server's protocol; its body is kept as it
  arrives) for at most ``SCORING_ADMISSION_MAX_WAIT_MS`` and never longer than its own
  deadline leaves time to score it. A slot that frees goes to the newest waiting request of
  the highest class (last in, first out: under a sustained overload the fresh requests, which
  still have their whole deadline, are answered, and the stale ones are refused), so a burst
  is absorbed instead of refused, and callers that retry at once (a closed loop) wait
  instead of spinning on refusals. A request whose wait runs out, or pushed out by newer ones
  past ``SCORING_ADMISSION_MAX_WAITING``, is refused 503 ``overloaded``.

Refusals leave in the service's error envelope with Retry-After: 503 ``overloaded`` (the
service is full for this class) or 429 ``quota_exceeded`` (this key is over its quota).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scoring_service.core.errors import Overloaded, ScoringError, response_for
from scoring_service.core.security import API_KEY_HEADER, MAX_KEY_LENGTH
from scoring_service.core.settings import Settings

if TYPE_CHECKING:
    from scoring_service.served import ServedDomain

Clock = Callable[[], float]

_KEY_HEADER = API_KEY_HEADER.lower().encode("latin-1")

ADMITTED = Counter("scoring_admission_admitted_total", "Requests admitted, by class.", ["priority"])
REFUSED = Counter(
    "scoring_admission_refused_total",
    "Requests refused at admission, by class and reason (overloaded, quota_exceeded).",
    ["priority", "reason"],
)
LIMIT = Gauge(
    "scoring_admission_limit",
    "The concurrency limit learned from latency (per process).",
    multiprocess_mode="livesum",
)
WAITING = Gauge(
    "scoring_admission_waiting",
    "Requests waiting for a slot at admission (per process).",
    multiprocess_mode="livesum",
)
WAITED = Counter(
    "scoring_admission_waited_total",
    "Requests that waited for a slot at admission, by class and outcome (admitted, refused).",
    ["priority", "outcome"],
)

ADMITTED_KEY = "scoring.admitted"
"""Scope key set on a request that waited and was given a slot: it is counted in flight from
then on (by the server), and the middleware does not check its class's limit again."""


class Priority(IntEnum):
    """A request's class: the lower, the later it is shed."""

    ESSENTIAL = 0  # admin, health, metrics: never shed
    REALTIME = 1  # POST /v1/<resource>/score
    BATCH = 2  # POST /v1/<resource>/score-batch
    EXPLAIN = 3  # GET /v1/<resource>/{id}/explanation
    ENTITY = 4  # GET /v1/<entity>/{id}/score, and any other route (docs, unknown paths)


class QuotaExceeded(ScoringError):
    """A key is over its rate or its share of the calls in flight."""

    status_code = 429
    code = "quota_exceeded"
    stage = "service"


class GradientLimit:
    """A concurrency limit learned from latency, after Gradient2 (Netflix concurrency-limits).

    Latency samples are averaged over windows (``window_s`` and at least ``window_samples``);
    per window, with ``short`` the window's average and ``long`` a slow average of the
    windows::

        gradient = clamp(tolerance * long / short, 0.5, 1.0)
        new      = limit * gradient + sqrt(limit)          # queue allowance
        limit    = (1 - smoothing) * limit + smoothing * new, within [min_limit, max_limit]

    The limit grows only while the calls in flight use at least half of it (an idle service
    learns nothing about its capacity), and the long average decays towards a lower short one
    so the limit recovers after a slow spell.
    """

    def __init__(
        self,
        initial: float,
        min_limit: int,
        max_limit: int,
        *,
        tolerance: float = 1.5,
        smoothing: float = 0.2,
        long_windows: int = 60,
        window_s: float = 0.05,
        window_samples: int = 10,
        clock: Clock = time.monotonic,
    ) -> None:
        self.limit = float(min(max(initial, min_limit), max_limit))
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.tolerance = tolerance
        self.smoothing = smoothing
        self.long_weight = 1.0 / long_windows
        self.window_s = window_s
        self.window_samples = window_samples
        self.clock = clock
        self.long_rtt: float | None = None
        self.low_rtt: float | None = None  # the service's unloaded latency (see _update)
        self._sum = 0.0
        self._count = 0
        self._max_in_flight = 0
        self._window_start = clock()

    @property
    def value(self) -> int:
        """The limit now, a whole number of calls."""
        return int(self.limit)

    def sample(self, rtt_s: float, in_flight: int) -> None:
        """One call's latency and the calls in flight when it ended."""
        self._sum += rtt_s
        self._count += 1
        self._max_in_flight = max(self._max_in_flight, in_flight)
        now = self.clock()
        if self._count >= self.window_samples and now - self._window_start >= self.window_s:
            self._update(self._sum / self._count, self._max_in_flight)
            self._sum, self._count, self._max_in_flight = 0.0, 0, 0
            self._window_start = now

    def _update(self, short: float, in_flight: int) -> None:
        # The lowest window average, drifting up slowly (a time constant of about 600
        # windows): what a call takes when it does not queue, which an overload's long
        # windows of queueing do not inflate as they do the long average.
        if self.low_rtt is None or short < self.low_rtt:
            self.low_rtt = short
        else:
            self.low_rtt += (short - self.low_rtt) * self.long_weight / 10
        if self.long_rtt is None:
            self.long_rtt = short
        else:
            self.long_rtt += (short - self.long_rtt) * self.long_weight
            if self.long_rtt > 2 * short:  # the service got faster: forget the slow past
                self.long_rtt *= 0.95
        if short <= 0:
            return
        gradient = max(0.5, min(1.0, self.tolerance * self.long_rtt / short))
        new = self.limit * gradient + math.sqrt(self.limit)
        if new > self.limit and in_flight < self.limit / 2:
            return  # not using the limit: no evidence that more would be answered in time
        self.limit = (1 - self.smoothing) * self.limit + self.smoothing * new
        self.limit = min(max(self.limit, self.min_limit), self.max_limit)
        LIMIT.set(self.limit)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; a call takes one."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.clock = clock
        self.stamp = clock()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one is there."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(frozen=True)
class Quota:
    """One key's quota: calls a second (None: no rate limit) and share of the limit in flight."""

    rate: float | None
    concurrency_share: float


class KeyState:
    """What admission tracks of one key: its bucket and its calls in flight."""

    __slots__ = ("bucket", "in_flight", "quota")

    def __init__(self, quota: Quota, clock: Clock) -> None:
        self.quota = quota
        self.bucket = (
            TokenBucket(quota.rate, max(1.0, quota.rate), clock) if quota.rate is not None else None
        )
        self.in_flight = 0


def parse_quotas(text: str) -> dict[str, Quota]:
    """``SCORING_KEY_QUOTAS``: comma-separated ``<sha256 hex>=<calls per second>/<share>``
    (either side may be empty: ``<digest>=50/`` or ``<digest>=/0.2``); ValueError naming the
    bad item otherwise."""
    quotas: dict[str, Quota] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        digest, _, spec = item.partition("=")
        rate_text, slash, share_text = spec.partition("/")
        digest = digest.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not slash:
            raise ValueError(
                "each key quota is <sha256 hex of the key>=<calls per second>/<share of the "
                f"concurrency limit>, e.g. {'0' * 8}...=100/0.5; got {item[:12]}..."
            )
        try:
            rate = float(rate_text) if rate_text.strip() else None
            share = float(share_text) if share_text.strip() else 1.0
        except ValueError:
            raise ValueError(f"key quota {digest[:8]}...: rate and share must be numbers") from None
        if (rate is not None and rate <= 0) or not 0 < share <= 1:
            raise ValueError(
                f"key quota {digest[:8]}...: the rate must be above 0 and the share in (0, 1]"
            )
        quotas[digest] = Quota(rate, share)
    return quotas


class Waiter:
    """A request waiting for a slot: how to start it, how to refuse it, until when it waits.

    ``start`` returns False when the request can no longer be started (its client left)."""

    __slots__ = ("expires", "priority", "refuse", "start")

    def __init__(
        self,
        priority: Priority,
        expires: float,
        start: Callable[[], bool],
        refuse: Callable[[], None],
    ) -> None:
        self.priority = priority
        self.expires = expires
        self.start = start
        self.refuse = refuse


class Classifier:
    """The class of a request, from its method and path, by the routes the app serves."""

    def __init__(self, domains: Sequence[ServedDomain]) -> None:
        self.exact: dict[tuple[str, str], Priority] = {}
        self.templated: list[tuple[re.Pattern[str], Priority]] = []
        for domain in domains:
            api = domain.api
            self.exact[("POST", api.score_path)] = Priority.REALTIME
            self.exact[("POST", api.batch_path)] = Priority.BATCH
            self._template(api.explanation_path, Priority.EXPLAIN)
            for route in api.entity_routes:
                self._template(route.path, Priority.ENTITY)

    def _template(self, path: str, priority: Priority) -> None:
        regex, _, _ = compile_path(path)
        self.templated.append((regex, priority))

    def __call__(self, method: str, path: str) -> Priority:
        found = self.exact.get((method, path))
        if found is not None:
            return found
        if path.startswith(("/health/", "/admin/")) or path in ("/admin", "/metrics"):
            return Priority.ESSENTIAL
        for regex, priority in self.templated:
            if regex.match(path):
                return priority
        return Priority.ENTITY


class Admission:
    """The admission state of one process: the limit, the calls in flight, the keys."""

    def __init__(self, settings: Settings, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.enabled = settings.admission_enabled
        self.limit = GradientLimit(
            settings.admission_initial_limit,
            settings.admission_min_limit,
            settings.max_in_flight,
            tolerance=settings.admission_tolerance,
            clock=clock,
        )
        self.shares = {
            Priority.REALTIME: 1.0,
            **{Priority[name.upper()]: share for name, share in settings.admission_shares.items()},
        }
        self.retry_after = str(settings.retry_after_s)
        self.in_flight = 0
        self.quotas = parse_quotas(settings.key_quotas)
        self.default_quota = Quota(settings.key_rate, settings.key_concurrency_share)
        self.keys: dict[str, KeyState] = {}
        self.max_wait_s = settings.admission_max_wait_ms / 1000
        self.max_waiting = settings.admission_max_waiting
        self.queues: dict[Priority, deque[Waiter]] = {
            p: deque() for p in Priority if p is not Priority.ESSENTIAL
        }
        self.waiting = 0
        LIMIT.set(self.limit.limit)

    def key_state(self, key: str) -> KeyState | None:
        """The state of a presented key (None for one too long to be valid; an unknown key's
        state is still tracked, bounded by the number of keys configured with a quota plus the
        ones seen: the endpoint refuses unknown keys with 401 right after)."""
        if len(key) > MAX_KEY_LENGTH:
            return None
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        state = self.keys.get(digest)
        if state is None:
            if len(self.keys) >= 10_000:  # random keys cannot grow this without bound
                self.keys = {d: s for d, s in self.keys.items() if s.in_flight}
            state = self.keys[digest] = KeyState(
                self.quotas.get(digest, self.default_quota), self.clock
            )
        return state

    def sheds(self, priority: Priority) -> bool:
        """Whether a call of this class would be refused 503 overloaded now (no side effect:
        the server's protocol asks it before a request becomes an ASGI call)."""
        return (
            self.enabled
            and priority is not Priority.ESSENTIAL
            and self.in_flight >= self.limit.value * self.shares[priority]
        )

    def wait_budget(self, deadline_s: float | None) -> float:
        """How long a request may wait for a slot (0: refuse it now): at most the configured
        wait, and never so long that its deadline (seconds from now, None: none asked) leaves
        less than twice the time a real-time call takes unloaded (``GradientLimit.low_rtt``:
        the long average grows with an overload's queueing, and a wait cut by it would turn
        the callers' retries into a storm of refusals just when waiting matters)."""
        budget = self.max_wait_s
        if deadline_s is not None:
            budget = min(budget, deadline_s - 2 * (self.limit.low_rtt or 0.0))
        return max(0.0, budget)

    def enqueue(self, waiter: Waiter) -> None:
        """Let a request wait for a slot. Past ``max_waiting`` the oldest waiting request of
        the lowest class is refused to make room (the newest are the ones worth answering)."""
        if self.waiting >= self.max_waiting:
            for priority in sorted(self.queues, reverse=True):
                queue = self.queues[priority]
                while queue and self.waiting >= self.max_waiting:
                    self._refuse(queue.popleft())
                if self.waiting < self.max_waiting:
                    break
        self.queues[waiter.priority].append(waiter)
        self.waiting += 1
        WAITING.set(self.waiting)

    def _refuse(self, waiter: Waiter) -> None:
        self.waiting -= 1
        WAITED.labels(waiter.priority.name.lower(), "refused").inc()
        waiter.refuse()

    def expire(self, now: float) -> None:
        """Refuse the requests whose wait ran out (the oldest of each class first)."""
        for queue in self.queues.values():
            while queue and queue[0].expires <= now:
                self._refuse(queue.popleft())
            if len(queue) > 1 and any(w.expires <= now for w in queue):
                # Shorter deadlines behind longer ones: rare, so a full pass is fine.
                keep = deque(w for w in queue if w.expires > now)
                for waiter in queue:
                    if waiter.expires <= now:
                        self._refuse(waiter)
                queue.clear()
                queue.extend(keep)
        WAITING.set(self.waiting)

    def release(self) -> None:
        """A call left: its slot goes to the newest waiting request of the highest class its
        share lets in (the started request counts in flight until its task ends)."""
        if not self.waiting:
            return
        limit = self.limit.value
        for priority, queue in self.queues.items():
            while queue and self.in_flight < limit * self.shares[priority]:
                waiter = queue.pop()  # the newest
                self.waiting -= 1
                self.in_flight += 1
                if waiter.start():
                    WAITED.labels(priority.name.lower(), "admitted").inc()
                else:
                    self.in_flight -= 1
            if queue:
                break  # this class is still waiting: lower classes wait behind it
        WAITING.set(self.waiting)

    def finished(self) -> None:
        """A request that waited and was started has ended."""
        self.in_flight -= 1
        self.release()

    def overloaded(self, priority: Priority) -> Overloaded:
        """The refusal of a call of this class at the limit, counted."""
        REFUSED.labels(priority.name.lower(), "overloaded").inc()
        return Overloaded(
            f"The service is at its limit of {self.limit.value} calls in flight for "
            f"{priority.name.lower()} calls; retry shortly.",
            headers={"Retry-After": self.retry_after},
        )

    def refusal(
        self, priority: Priority, key: KeyState | None, *, holds_slot: bool = False
    ) -> ScoringError | None:
        """Why this request is refused now, or None: admit it (``holds_slot``: it waited and
        was given a slot already, only its key's quota is checked)."""
        limit = self.limit.value
        if not holds_slot and self.in_flight >= limit * self.shares[priority]:
            return self.overloaded(priority)
        if key is not None:
            if key.in_flight >= max(1.0, limit * key.quota.concurrency_share):
                REFUSED.labels(priority.name.lower(), "quota_exceeded").inc()
                return QuotaExceeded(
                    "This API key has its share of the service's calls in flight; wait for "
                    "answers before sending more.",
                    headers={"Retry-After": self.retry_after},
                )
            if key.bucket is not None:
                wait = key.bucket.take()
                if wait > 0:
                    REFUSED.labels(priority.name.lower(), "quota_exceeded").inc()
                    return QuotaExceeded(
                        f"This API key may make {key.quota.rate:g} calls a second; slow down.",
                        headers={"Retry-After": str(max(1, math.ceil(wait)))},
                    )
        return None


class AdmissionMiddleware:
    """Admits or refuses each request at arrival (see the module docstring)."""

    def __init__(self, app: ASGIApp, admission: Admission, classify: Classifier) -> None:
        self.app = app
        self.admission = admission
        self.classify = classify
        self._admitted = {p: ADMITTED.labels(p.name.lower()) for p in Priority}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission = self.admission
        if scope["type"] != "http" or not admission.enabled:
            await self.app(scope, receive, send)
            return
        priority = self.classify(scope["method"], scope["path"])
        if priority is Priority.ESSENTIAL:
            await self.app(scope, receive, send)
            return
        key = None
        for name, value in scope["headers"]:
            if name == _KEY_HEADER:
                key = admission.key_state(value.decode("latin-1"))
                break
        holds_slot = scope.get(ADMITTED_KEY, False)  # waited; counted in flight by the server
        refused = admission.refusal(priority, key, holds_slot=holds_slot)
        if refused is not None:
            await response_for(refused)(scope, receive, send)
            return
        self._admitted[priority].inc()
        if not holds_slot:
            admission.in_flight += 1
        if key is not None:
            key.in_flight += 1
        started = admission.clock()
        try:
            if priority is Priority.REALTIME:
                await self.app(scope, receive, _timed(send, admission, started))
            else:
                await self.app(scope, receive, send)
        finally:
            if key is not None:
                key.in_flight -= 1
            if not holds_slot:
                admission.in_flight -= 1
                admission.release()


def _timed(send: Send, admission: Admission, started: float) -> Send:
    """``send``, feeding the limit the time to the answer's start (a 200 only: refusals and
    errors say nothing of how long scoring takes)."""

    async def timed_send(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 200:
            admission.limit.sample(admission.clock() - started, admission.in_flight)
        await send(message)

    return timed_send
