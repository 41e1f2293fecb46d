"""The durable event stream: transactions as events, a source interface, and Redis Streams.

The consumer (``feature_pipelines.stream``) reads through the ``EventSource`` protocol, so a
Kafka-backed source (a consumer group whose offsets are committed after the write) can replace
Redis Streams without touching the aggregation code. The contract of a source:

- ``read`` hands out events at least once: after a restart, events that were delivered to this
  consumer but never acknowledged come back first;
- ``ack`` is called only after an event's effect is written, so a crash between the write and
  the ack redelivers the event and the (idempotent) write is simply repeated.

Redis Streams implement it with a consumer group: ``XREADGROUP`` hands out entries, the group's
pending-entries list remembers what was delivered and not acknowledged, ``XACK`` acknowledges,
and ``XAUTOCLAIM`` takes over entries left pending by a consumer that died under another name.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import pandas as pd
import redis

from feature_pipelines import schema

logger = logging.getLogger(__name__)

DEFAULT_STREAM = "fraud:transactions"
DEFAULT_GROUP = "stream-features"
DEFAULT_CONSUMER = "consumer-1"
_OPTIONAL = (schema.CARD_COUNTRY, schema.IP_COUNTRY, schema.MERCHANT_COUNTRY, schema.CURRENCY)


class InvalidEvent(ValueError):
    """A stream entry that is not a well-formed transaction event."""


@dataclass(frozen=True)
class TransactionEvent:
    """One payment as it travels on the stream; ``event_time_us`` is UTC epoch microseconds."""

    transaction_id: str
    event_time_us: int
    amount: float
    ip_address: str
    card_id: str
    merchant_id: str
    card_country: str | None = None
    ip_country: str | None = None
    merchant_country: str | None = None
    currency: str | None = None

    @property
    def event_time(self) -> datetime:
        """Event time as an aware UTC datetime (microsecond precision)."""
        return datetime.fromtimestamp(self.event_time_us / 1_000_000, tz=UTC)

    def to_fields(self) -> dict[str, str]:
        """Flat string fields of a stream entry; absent optional fields are left out."""
        fields = {
            schema.TRANSACTION_ID: self.transaction_id,
            "event_time_us": str(self.event_time_us),
            # repr round-trips a float exactly, so a redelivered event decodes identically.
            schema.AMOUNT: repr(float(self.amount)),
            schema.IP_ADDRESS: self.ip_address,
            schema.CARD_ID: self.card_id,
            schema.MERCHANT_ID: self.merchant_id,
        }
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str] | Mapping[bytes, bytes]) -> TransactionEvent:
        """Decode a stream entry; raises InvalidEvent naming what is wrong."""
        text: dict[str, str] = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in cast(Mapping[Any, Any], fields).items()
        }
        required = [
            schema.TRANSACTION_ID,
            "event_time_us",
            schema.AMOUNT,
            schema.IP_ADDRESS,
            schema.CARD_ID,
            schema.MERCHANT_ID,
        ]
        missing = [name for name in required if not text.get(name)]
        if missing:
            raise InvalidEvent(f"event lacks {missing}")
        try:
            event_time_us = int(text["event_time_us"])
            amount = float(text[schema.AMOUNT])
        except ValueError as exc:
            raise InvalidEvent(f"event has a malformed time or amount: {exc}") from None
        if not math.isfinite(amount) or amount < 0:
            raise InvalidEvent(f"amount must be finite and not negative, got {amount!r}")
        # '|' separates the parts of a window-state member (see stream.WindowState).
        for name in (schema.IP_ADDRESS, schema.CARD_ID):
            if "|" in text[name]:
                raise InvalidEvent(f"{name} must not contain '|'")
        return cls(
            transaction_id=text[schema.TRANSACTION_ID],
            event_time_us=event_time_us,
            amount=amount,
            ip_address=text[schema.IP_ADDRESS],
            card_id=text[schema.CARD_ID],
            merchant_id=text[schema.MERCHANT_ID],
            **{name: text.get(name) or None for name in _OPTIONAL},
        )


@dataclass(frozen=True)
class StreamMessage:
    """An entry read from the stream: its id (to acknowledge it) and its decoded event."""

    message_id: str
    event: TransactionEvent | None
    error: str | None = None  # why the entry could not be decoded, when event is None
    raw: Mapping[str, str] | None = None


class EventSource(Protocol):
    """Where the consumer reads events from: at-least-once, acknowledged after the write."""

    def read(self, max_events: int, block_ms: int) -> list[StreamMessage]:
        """Up to ``max_events`` events; unacknowledged ones of this consumer come first."""
        ...

    def ack(self, message_ids: Sequence[str]) -> None:
        """Acknowledge events whose effect has been written; they are not delivered again."""
        ...

    def dead_letter(self, message: StreamMessage) -> None:
        """Set aside an entry that can never be processed, so it does not block the stream."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def redis_client(connection: str, **kwargs: object) -> redis.Redis:
    """A client for ``redis://...`` URLs or Feast-style ``host:port[,password=...,ssl=true]``."""
    if "://" in connection:
        return redis.Redis.from_url(connection, **kwargs)  # type: ignore[arg-type]
    head, *options = connection.split(",")
    host, _, port = head.rpartition(":")
    params: dict[str, object] = {"host": host or "127.0.0.1", "port": int(port or 6379)}
    for option in options:
        key, _, value = option.partition("=")
        key = key.strip()
        if key == "password":
            params["password"] = value
        elif key == "ssl":
            params["ssl"] = value.strip().lower() == "true"
        elif key == "db":
            params["db"] = int(value)
    params.update(kwargs)
    return redis.Redis(**params)  # type: ignore[arg-type]


class RedisStreamSource:
    """A Redis Stream read through a consumer group (the default ``EventSource``)."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str = DEFAULT_STREAM,
        group: str = DEFAULT_GROUP,
        consumer: str = DEFAULT_CONSUMER,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        # Own pending entries (delivered before a crash, never acknowledged) are read first,
        # walking the pending list with a cursor: they stay pending until acknowledged.
        self._recovering = True
        self._recover_after = "0"
        self._next_claim = 0.0
        ensure_group(client, stream, group)

    def read(self, max_events: int, block_ms: int) -> list[StreamMessage]:
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

    def dead_letter(self, message: StreamMessage) -> None:
        """Copy the entry to ``<stream>:dead`` with the reason, then acknowledge it."""
        fields = dict(message.raw or {})
        fields["dead_letter_reason"] = message.error or "unknown"
        fields["dead_letter_id"] = message.message_id
        self.client.xadd(f"{self.stream}:dead", fields)  # type: ignore[arg-type]
        self.ack([message.message_id])

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def _xreadgroup(self, start: str, count: int, block_ms: int | None) -> list[StreamMessage]:
        reply = cast(
            list[Any],
            self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
            ),
        )
        if not reply:
            return []
        (_, entries), *_ = reply
        return [_decode(mid, fields) for mid, fields in entries if fields is not None]

    def _claim(self, count: int) -> list[StreamMessage]:
        reply = cast(
            list[Any],
            self.client.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count
            ),
        )
        entries = reply[1] if reply else []
        if entries:
            logger.warning("took over %d entries left pending by another consumer", len(entries))
        return [_decode(mid, fields) for mid, fields in entries if fields is not None]


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) when missing; reading starts at the beginning."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _decode(message_id: bytes | str, fields: Mapping[bytes, bytes]) -> StreamMessage:
    mid = message_id.decode() if isinstance(message_id, bytes) else message_id
    raw = {k.decode(): v.decode() for k, v in fields.items()}
    try:
        return StreamMessage(mid, TransactionEvent.from_fields(raw), raw=raw)
    except InvalidEvent as exc:
        return StreamMessage(mid, None, error=str(exc), raw=raw)


def append_events(
    client: redis.Redis,
    events: Iterable[TransactionEvent],
    stream: str = DEFAULT_STREAM,
    max_len: int | None = None,
    chunk: int = 1_000,
) -> list[str]:
    """XADD events in pipelined chunks; returns their stream ids.

    ``max_len`` trims the stream approximately; entries beyond it are dropped even when the
    consumer has not read them yet, so size it to the longest outage the consumer may have.
    """
    ids: list[str] = []
    batch: list[TransactionEvent] = []

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


def events_from_frame(frame: pd.DataFrame) -> list[TransactionEvent]:
    """Transactions (schema columns) as stream events, in the frame's order."""
    stamps = pd.to_datetime(frame[schema.EVENT_TIMESTAMP], utc=True)
    times = stamps.dt.tz_convert(None).to_numpy(dtype="datetime64[us]").astype("int64")

    def column(name: str) -> list[str | None]:
        if name not in frame.columns:
            return [None] * len(frame)
        return [None if pd.isna(v) else str(v) for v in frame[name]]

    optional = {name: column(name) for name in _OPTIONAL}
    return [
        TransactionEvent(
            transaction_id=str(tid),
            event_time_us=int(t),
            amount=float(amount),
            ip_address=str(ip),
            card_id=str(card),
            merchant_id=str(merchant),
            **{name: values[i] for name, values in optional.items()},
        )
        for i, (tid, t, amount, ip, card, merchant) in enumerate(
            zip(
                frame[schema.TRANSACTION_ID],
                times,
                frame[schema.AMOUNT],
                frame[schema.IP_ADDRESS],
                frame[schema.CARD_ID],
                frame[schema.MERCHANT_ID],
                strict=True,
            )
        )
    ]
