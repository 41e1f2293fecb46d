"""The durable event stream: a source interface, and Redis Streams behind it.

The consumer (``streaming.consumer``) reads through the ``EventSource`` protocol, so a
Kafka-backed source (a consumer group whose offsets are committed after the write) can replace
Redis Streams without touching the window code. The contract of a source:

- ``read`` hands out events at least once: after a restart, events that were delivered to this
  consumer but never acknowledged come back first;
- ``ack`` is called only after an event's effect is written, so a crash between the write and
  the ack redelivers the event and the (idempotent) write is simply repeated.

Redis Streams implement it with a consumer group: ``XREADGROUP`` hands out entries, the group's
pending-entries list remembers what was delivered and not acknowledged, ``XACK`` acknowledges,
and ``XAUTOCLAIM`` takes over entries left pending by a consumer that died under another name.

What an event is belongs to its domain (e.g. ``fraud.events.TransactionEvent``): a source is
given the function that decodes an entry's fields, and entries it refuses are dead-lettered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import redis

from feature_repo.redis_connection import redis_options

logger = logging.getLogger(__name__)

DEFAULT_GROUP = "stream-features"
DEFAULT_CONSUMER = "consumer-1"

EventT = TypeVar("EventT")


class InvalidEvent(ValueError):
    """A stream entry that is not a well-formed event of its stream."""


class StreamEvent(Protocol):
    """What the source needs of an event to append it: its flat string fields."""

    def to_fields(self) -> dict[str, str]:
        """The entry's fields; decoding them gives the event back."""
        ...


@dataclass(frozen=True)
class StreamMessage(Generic[EventT]):
    """An entry read from the stream: its id (to acknowledge it) and its decoded event."""

    message_id: str
    event: EventT | None
    error: str | None = None  # why the entry could not be decoded, when event is None
    raw: Mapping[str, str] | None = None


class EventSource(Protocol[EventT]):
    """Where the consumer reads events from: at-least-once, acknowledged after the write."""

    def read(self, max_events: int, block_ms: int) -> list[StreamMessage[EventT]]:
        """Up to ``max_events`` events; unacknowledged ones of this consumer come first."""
        ...

    def ack(self, message_ids: Sequence[str]) -> None:
        """Acknowledge events whose effect has been written; they are not delivered again."""
        ...

    def dead_letter(self, message: StreamMessage[Any]) -> None:
        """Set aside an entry that can never be processed, so it does not block the stream."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def redis_client(connection: str, **kwargs: object) -> redis.Redis:
    """A client for ``redis://...`` URLs or Feast-style ``host:port[,password=...,ssl=true]``."""
    options = redis_options(connection)
    if "url" in options:
        return redis.Redis.from_url(str(options["url"]), **kwargs)  # type: ignore[arg-type]
    params = {**options, **kwargs}
    return redis.Redis(**params)  # type: ignore[arg-type]


class RedisStreamSource(Generic[EventT]):
    """A Redis Stream read through a consumer group (the default ``EventSource``).

    ``decode`` turns an entry's fields into an event, raising ``InvalidEvent`` for an entry
    that is not one (it is then handed out with its error, for the consumer to dead-letter).
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str = DEFAULT_GROUP,
        consumer: str = DEFAULT_CONSUMER,
        *,
        decode: Callable[[Mapping[str, str]], EventT],
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.decode = decode
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        # Own pending entries (delivered before a crash, never acknowledged) are read first,
        # walking the pending list with a cursor: they stay pending until acknowledged.
        self._recovering = True
        self._recover_after = "0"
        self._next_claim = 0.0
        ensure_group(client, stream, group)

    def read(self, max_events: int, block_ms: int) -> list[StreamMessage[EventT]]:
        """Recovered entries first, then entries of dead consumers, then new entries."""
        if self._recovering:
            entries = self._xreadgroup(self._recover_after, max_events, None)
            if entries:
                self._recover_after = entries[-1].message_id
                return entries
            self._recovering = False
        if self.claim_idle_ms > 0 and time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_idle_ms / 1000.0
            claimed = self._claim(max_events)
            if claimed:
                return claimed
        return self._xreadgroup(">", max_events, block_ms)

    def ack(self, message_ids: Sequence[str]) -> None:
        """XACK in one call."""
        if message_ids:
            self.client.xack(self.stream, self.group, *message_ids)

    def dead_letter(self, message: StreamMessage[Any]) -> None:
        """Copy the entry to ``<stream>:dead`` with the reason, then acknowledge it."""
        fields = dict(message.raw or {})
        fields["dead_letter_reason"] = message.error or "unknown"
        fields["dead_letter_id"] = message.message_id
        self.client.xadd(f"{self.stream}:dead", fields)  # type: ignore[arg-type]
        self.ack([message.message_id])

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def _xreadgroup(
        self, start: str, count: int, block_ms: int | None
    ) -> list[StreamMessage[EventT]]:
        reply = cast(
            list[Any],
            self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
            ),
        )
        if not reply:
            return []
        (_, entries), *_ = reply
        return [self._message(mid, fields) for mid, fields in entries if fields is not None]

    def _claim(self, count: int) -> list[StreamMessage[EventT]]:
        reply = cast(
            list[Any],
            self.client.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count
            ),
        )
        entries = reply[1] if reply else []
        if entries:
            logger.warning("took over %d entries left pending by another consumer", len(entries))
        return [self._message(mid, fields) for mid, fields in entries if fields is not None]

    def _message(
        self, message_id: bytes | str, fields: Mapping[bytes, bytes]
    ) -> StreamMessage[EventT]:
        mid = message_id.decode() if isinstance(message_id, bytes) else message_id
        raw = {k.decode(): v.decode() for k, v in fields.items()}
        try:
            return StreamMessage(mid, self.decode(raw), raw=raw)
        except InvalidEvent as exc:
            return StreamMessage(mid, None, error=str(exc), raw=raw)


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) when missing; reading starts at the beginning."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def append_events(
    client: redis.Redis,
    events: Iterable[StreamEvent],
    stream: str,
    max_len: int | None = None,
    chunk: int = 1_000,
) -> list[str]:
    """XADD events in pipelined chunks; returns their stream ids.

    ``max_len`` trims the stream approximately; entries beyond it are dropped even when the
    consumer has not read them yet, so size it to the longest outage the consumer may have.
    """
    ids: list[str] = []
    batch: list[StreamEvent] = []

    def flush() -> None:
        with client.pipeline(transaction=False) as pipe:
            for event in batch:
                pipe.xadd(
                    stream,
                    event.to_fields(),  # type: ignore[arg-type]
                    maxlen=max_len,
                    approximate=True,
                )
            ids.extend(i.decode() if isinstance(i, bytes) else i for i in pipe.execute())
        batch.clear()

    for event in events:
        batch.append(event)
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    return ids
