"""One member of the stream-scoring consumer group: read, score, decide, absorb, acknowledge.

Per batch of entries, in this order:

1. decode each entry into the domain's request model (the API's validation; an entry it refuses
   is copied to ``<stream>:dead`` with the refusal's code and sentence, then acknowledged);
2. skip the business ids decided before (one MGET of their dedup keys: a redelivery);
3. score the rest through the domain's live scorer (``Scorer.score_columns``: one feature read,
   on-demand features, the deployment's variants, labels, reasons) and log them in the
   prediction log;
4. write the decisions (``decisions.DecisionWriter``: decision and dedup key in one script);
5. let the window state absorb the events (``windows.WindowStep``, when configured);
6. XACK the batch.

A crash anywhere before 6 redelivers the batch (to this member on restart, or to another one
through XAUTOCLAIM); steps 2 and 4 make the second pass write no second decision, and step 5 is
idempotent. Backpressure: a reader task hands what it reads to the scoring task, and reads
only while the entries read and not yet acknowledged leave room for one more ``batch_size``
under ``max_in_flight``; when the scorer lags, reads pause and entries wait in the stream (the
group's lag, a metric). The scoring task joins the reads waiting for it into batches of up to
``batch_size`` (``take``): a steady flow is read in small pieces as it arrives, and a scorer that
fell behind on them catches up with full batches, at a lower cost per event, instead of one
small batch per read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ValidationError

from scoring_service.api.domain_api import DomainApi
from scoring_service.core.errors import NotReady, ScoringError, validation_message
from scoring_service.served import ServedDomain
from scoring_service.stages.features import STATUS_NAMES
from scoring_service.stages.mapping import map_records
from scoring_service.stream_scoring import metrics
from scoring_service.stream_scoring.decisions import Decision, DecisionWriter

if TYPE_CHECKING:  # the window step needs the pipelines, which the serving image leaves out
    from scoring_service.stream_scoring.windows import WindowStep

logger = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]  # (entry id, fields)


@dataclass(frozen=True)
class StreamOptions:
    """Where a member reads and writes, and how much it holds."""

    stream: str
    decisions: str
    group: str = "stream-scoring"
    consumer: str = "scorer-1"
    batch_size: int = 256
    block_ms: int = 100
    max_in_flight: int = 2_048
    claim_idle_ms: int = 30_000
    dedup_ttl_seconds: int = 7 * 24 * 3600
    decisions_max_len: int = 0
    retry_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.max_in_flight < self.batch_size:
            raise ValueError("max_in_flight must hold at least one batch (batch_size)")


@dataclass
class StreamStats:
    """What a member did."""

    decided: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    claimed: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"{self.decided} decisions ({self.decided / elapsed:.0f}/s) in {self.batches} "
            f"batches, {self.duplicates} duplicates skipped, {self.dead_letters} dead letters, "
            f"{self.claimed} taken over"
        )


def entry_millis(entry_id: str) -> int:
    """The append time (ms since the epoch) a Redis stream id starts with."""
    return int(entry_id.partition("-")[0])


def take(pending: deque[list[Entry]], size: int) -> list[Entry]:
    """The next batch: the entries read first, up to ``size``, across the reads waiting in
    ``pending`` (removed from it); a read split in two keeps its rest first in line."""
    batch: list[Entry] = []
    while pending and len(batch) < size:
        head = pending.popleft()
        room = size - len(batch)
        if len(head) > room:
            pending.appendleft(head[room:])
            head = head[:room]
        batch.extend(head)
    return batch


def _freshness(status: int, age: float | None) -> dict[str, Any]:
    return {"status": STATUS_NAMES[status], "age_seconds": age}


class StreamScorer:
    """Scores a Redis stream's entries as one member of a consumer group (module docstring).

    ``domain`` is opened (``served.open_domain``): its scorer is read per batch, so a deployment
    swapped by its manager takes effect at the next batch.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        domain: ServedDomain,
        options: StreamOptions,
        *,
        windows: WindowStep | None = None,
    ) -> None:
        self.client = client
        self.domain = domain
        self.options = options
        self.windows = windows
        self.api: DomainApi = domain.api
        self.request_fields = set(self.api.request.model_fields)
        self.writer = DecisionWriter(
            client,
            options.decisions,
            ttl_seconds=options.dedup_ttl_seconds,
            max_len=options.decisions_max_len,
        )
        self.stats = StreamStats()
        self._pending: deque[list[Entry]] = deque()  # reads the scorer has not taken yet
        self._arrived = asyncio.Event()  # set when a read is appended to _pending
        self._room = asyncio.Event()  # set when one more batch fits under max_in_flight
        self._room.set()
        self._in_flight = 0
        self._held: set[str] = set()  # ids read and not yet acknowledged by this member
        self._recover_after: str | None = "0"  # own pending entries first, then new ones
        self._next_claim = 0.0
        stream = options.stream
        self._decided = metrics.EVENTS.labels(stream, "decided")
        self._duplicate = metrics.EVENTS.labels(stream, "duplicate")
        self._dead = metrics.EVENTS.labels(stream, "dead_letter")
        self._latency = metrics.EVENT_TO_DECISION.labels(stream)
        self._batch_seconds = metrics.BATCH_SECONDS.labels(stream)
        self._in_flight_gauge = metrics.IN_FLIGHT.labels(stream)
        self._pauses = metrics.READ_PAUSES.labels(stream)
        self._claimed = metrics.CLAIMED.labels(stream)

    async def ensure_group(self) -> None:
        """Create the group (and the stream) when missing; a new group starts at the beginning."""
        try:
            await self.client.xgroup_create(
                self.options.stream, self.options.group, id="0", mkstream=True
            )
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(
        self,
        stop: asyncio.Event,
        *,
        max_events: int | None = None,
        idle_exit_seconds: float | None = None,
    ) -> StreamStats:
        """Score until ``stop`` is set, ``max_events`` entries are handled, or the stream has
        been idle ``idle_exit_seconds``. The batch being scored when it stops is finished and
        acknowledged; batches read and not scored stay pending (redelivered on restart)."""
        await self.ensure_group()
        done = asyncio.Event()
        reader = asyncio.create_task(self._read_loop(stop, done, idle_exit_seconds))
        lag = asyncio.create_task(self._lag_loop(done))
        try:
            while not done.is_set() or self._pending:
                if stop.is_set():
                    break
                if not self._pending:
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):  # a look at stop every 0.1 s
                        await asyncio.wait_for(self._arrived.wait(), timeout=0.1)
                    continue
                await self._handle(take(self._pending, self.options.batch_size), stop)
                handled = self.stats.decided + self.stats.duplicates + self.stats.dead_letters
                if max_events is not None and handled >= max_events:
                    break
        finally:
            done.set()
            for task in (reader, lag):
                task.cancel()
            await asyncio.gather(reader, lag, return_exceptions=True)
        return self.stats

    # --- reading ------------------------------------------------------------------------------

    async def _read_loop(
        self, stop: asyncio.Event, done: asyncio.Event, idle_exit_seconds: float | None
    ) -> None:
        idle_since = time.monotonic()
        options = self.options
        try:
            while not stop.is_set() and not done.is_set():
                if self._in_flight + options.batch_size > options.max_in_flight:
                    self._pauses.inc()  # the scorer lags: no read until it acknowledges a batch
                    self._room.clear()
                    await self._room.wait()
                    continue
                entries = await self._read()
                if not entries:
                    if (
                        idle_exit_seconds is not None
                        and self._in_flight == 0
                        and time.monotonic() - idle_since >= idle_exit_seconds
                    ):
                        return
                    continue
                idle_since = time.monotonic()
                self._held.update(entry_id for entry_id, _ in entries)
                self._in_flight += len(entries)
                self._in_flight_gauge.set(self._in_flight)
                self._pending.append(entries)
                self._arrived.set()
        finally:
            done.set()
            self._arrived.set()

    async def _read(self) -> list[Entry]:
        options = self.options
        if self._recover_after is not None:
            entries = await self._xreadgroup(self._recover_after, None)
            if entries:
                self._recover_after = entries[-1][0]
                return entries
            self._recover_after = None
        if options.claim_idle_ms > 0 and time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + options.claim_idle_ms / 2000.0
            claimed = await self._claim()
            if claimed:
                return claimed
        return await self._xreadgroup(">", options.block_ms)

    async def _xreadgroup(self, start: str, block_ms: int | None) -> list[Entry]:
        options = self.options
        reply = await self.client.xreadgroup(
            options.group,
            options.consumer,
            {options.stream: start},
            count=options.batch_size,
            block=block_ms,
        )
        if not reply:
            return []
        (_, entries), *_ = reply
        return [_entry(mid, fields) for mid, fields in entries if fields is not None]

    async def _claim(self) -> list[Entry]:
        """Entries another member left pending longer than ``claim_idle_ms`` (a dead member)."""
        options = self.options
        reply = cast(
            list[Any],
            await self.client.xautoclaim(
                options.stream,
                options.group,
                options.consumer,
                options.claim_idle_ms,
                "0-0",
                count=options.batch_size,
            ),
        )
        entries = [_entry(mid, f) for mid, f in (reply[1] if reply else []) if f is not None]
        # Its own entries waiting in its queue longer than the idle time are in hand already.
        entries = [entry for entry in entries if entry[0] not in self._held]
        if entries:
            logger.warning("took over %d entries left pending by another member", len(entries))
            self.stats.claimed += len(entries)
            self._claimed.inc(len(entries))
        return entries

    async def _lag_loop(self, done: asyncio.Event) -> None:
        options = self.options
        lag = metrics.LAG.labels(options.stream, options.group)
        pending = metrics.GROUP_PENDING.labels(options.stream, options.group)
        while not done.is_set():
            try:
                for group in await self.client.xinfo_groups(options.stream):
                    name = group.get("name")
                    if (name.decode() if isinstance(name, bytes) else name) == options.group:
                        if group.get("lag") is not None:
                            lag.set(group["lag"])
                        pending.set(group.get("pending", 0))
            except aioredis.RedisError as exc:
                logger.warning("cannot read the group's lag: %s", exc)
            await asyncio.sleep(1.0)

    # --- scoring ------------------------------------------------------------------------------

    async def _handle(self, batch: list[Entry], stop: asyncio.Event) -> None:
        """Score, decide, absorb and acknowledge one batch, retrying while the store fails."""
        started = time.perf_counter()
        while True:
            try:
                await self._decide(batch)
                break
            except (ScoringError, aioredis.RedisError, OSError) as exc:
                if stop.is_set():
                    raise
                logger.error("batch of %d entries not decided, retrying: %s", len(batch), exc)
                await asyncio.sleep(self.options.retry_seconds)
        self._in_flight -= len(batch)
        self._held.difference_update(entry_id for entry_id, _ in batch)
        self._in_flight_gauge.set(self._in_flight)
        if self._in_flight + self.options.batch_size <= self.options.max_in_flight:
            self._room.set()
        self.stats.batches += 1
        self._batch_seconds.observe(time.perf_counter() - started)

    async def _decide(self, batch: list[Entry]) -> None:
        business_id = self.api.business_id
        valid: list[tuple[str, dict[str, str], BaseModel]] = []
        for entry_id, fields in batch:
            try:
                # Lax: an entry's fields are strings, a number among them is parsed as one.
                request = self.api.request.model_validate(
                    {k: v for k, v in fields.items() if k in self.request_fields}, strict=False
                )
            except ValidationError as exc:
                await self._dead_letter(entry_id, fields, validation_message(exc.errors()))
                continue
            valid.append((entry_id, fields, request))
        ids = [str(getattr(request, business_id)) for _, _, request in valid]
        seen = await self.writer.decided(ids)
        fresh = [item for item, before in zip(valid, seen, strict=True) if not before]
        written = await self._score(fresh) if fresh else 0
        duplicates = len(valid) - written
        if self.windows is not None and valid:
            await asyncio.to_thread(self.windows.absorb, [(i, f) for i, f, _ in valid])
        await self.client.xack(self.options.stream, self.options.group, *(i for i, _ in batch))
        self.stats.decided += written
        self.stats.duplicates += duplicates
        self._decided.inc(written)
        if duplicates:
            self._duplicate.inc(duplicates)

    async def _score(self, items: list[tuple[str, dict[str, str], BaseModel]]) -> int:
        """Score these events, write their decisions, log them; how many were written."""
        scorer = self.domain.scorer
        if scorer is None:
            raise NotReady("The domain is closed; its scorer is not open.")
        business_id = self.api.business_id
        requests = [request for _, _, request in items]
        mapped = map_records(requests, scorer.mapping)
        scored = await scorer.score_columns(mapped)
        version = scorer.version_label
        variants = scored.variants or ["champion"] * len(scored)
        versions = scored.model_versions or [version] * len(scored)
        freshness = scored.freshness(_freshness)
        decisions = []
        for i, (entry_id, _, request) in enumerate(items):
            key = str(getattr(request, business_id))
            answer = {
                business_id: key,
                "score": scored.scores[i],
                "label": scored.labels[i],
                "reasons": scored.reasons[i],
                "model_version": versions[i] or version,
                "variant": variants[i],
                "feature_freshness": freshness[i],
                "request_id": entry_id,
            }
            decisions.append(Decision(key, entry_id, orjson.dumps(answer)))
        written = await self.writer.write(decisions)
        now_ms = time.time() * 1000.0
        for (entry_id, _, _), new in zip(items, written, strict=True):
            if new:
                self._latency.observe(max(now_ms - entry_millis(entry_id), 0.0) / 1000.0)
        answers = self.domain.answers
        if answers is not None:
            await answers.record_columns(
                items[0][0],
                [str(getattr(r, business_id)) for r in requests],
                mapped,
                scored,
                default_version=scorer.model.version_label,
                feature_names=scorer.model.manifest.features,
                # The log's latency is event to decision: from the first entry's append.
                arrived=time.monotonic() - max(now_ms - entry_millis(items[0][0]), 0.0) / 1000,
            )
        return sum(written)

    async def _dead_letter(self, entry_id: str, fields: Mapping[str, str], reason: str) -> None:
        """Copy a refused entry to ``<stream>:dead`` with the refusal, then acknowledge it."""
        logger.error("dead-lettering entry %s: %s", entry_id, reason)
        dead = {
            **fields,
            "dead_letter_code": "invalid_request",
            "dead_letter_stage": "validation",
            "dead_letter_reason": reason,
            "dead_letter_id": entry_id,
        }
        await self.client.xadd(f"{self.options.stream}:dead", dead)  # type: ignore[arg-type]
        await self.client.xack(self.options.stream, self.options.group, entry_id)
        self.stats.dead_letters += 1
        self._dead.inc()


def _entry(message_id: bytes | str, fields: Mapping[bytes, bytes]) -> Entry:
    mid = message_id.decode() if isinstance(message_id, bytes) else message_id
    return mid, {k.decode(): v.decode() for k, v in fields.items()}
