"""Streaming features: windowed aggregates per IP and per card, fresh within a second.

A consumer reads transactions from a durable stream (``stream_source.EventSource``; Redis
Streams by default), keeps each entity's recent events in Redis, and writes one feature row
per event through Feast's push API (the push sources of ``ip_stream_features`` and
``card_stream_features``), online for serving and offline for training. ``replay`` runs the
same window code over a stored history and writes the offline tables in bulk.

Point-in-time semantics
-----------------------
The row written for event ``e`` at time ``t`` describes the windows ``(t - w, t]``: it
*includes* ``e`` and every event of the entity up to and including ``t``. It is stamped
``event_timestamp = t + n µs``, where ``n >= 1`` is the number of the entity's events at exactly
``t`` that the row counts (1 unless events tie; a later, more complete row of a tie is stamped
later, so every store keeps the complete one). Hence:

- serving reads, for the next transaction, a row that counts every earlier event;
- a point-in-time join for a transaction at ``t`` (latest row with timestamp ``<= t``) never
  sees the transaction's own row, nor that of another event at the same instant: training
  sees exactly what the online store held when the transaction was scored (given a consumer
  that keeps up), without leaking the label-bearing transaction into its own features;
- a row's windows end at its event: a card quiet since its last event keeps that event's
  counts until the view's TTL (1 h, the longest window) withholds them, in training and in
  serving alike.

Idempotency (at-least-once delivery, exactly-once effect)
---------------------------------------------------------
Window state lives in Redis, one sorted set per entity (``<prefix>:<kind>:<entity>``) whose
members are ``transaction_id|amount_in_cents|counterpart`` scored by event time in µs. Adding
an event twice is a no-op, so a redelivered event changes nothing, and every row is a pure
function of the set of events at or before its time. Each batch runs, in order: add the events
and read the windows back (one MULTI/EXEC), push the rows online, push them offline (buffered,
on a background thread), and only then acknowledge. A crash anywhere before the
acknowledgement redelivers the batch; re-running it writes the same rows again (same values,
same timestamps: the online store keeps one, the offline store gets identical duplicates that
a point-in-time join cannot tell apart). Amounts are summed in integer cents so the live
consumer and ``replay`` agree to the last bit.

Event times are assumed to be coarser than a microsecond in practice (payment systems stamp
milliseconds), so no transaction falls within ``n`` µs after another one of the same entity.
Events older than the entity's newest event by more than ``retention - longest window``
(default: one hour late) fall out of the state and are not counted. Rows assume one consumer
per entity at a time: scale out by partitioning the stream (for example by card), not by adding
consumers to one group.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, cast

import numpy as np
import pandas as pd
import redis
from feast import FeatureStore
from feast.data_source import PushMode

from feature_pipelines import schema
from feature_pipelines.stream_source import EventSource, StreamMessage, TransactionEvent
from feature_pipelines.tables import write_feature_table

logger = logging.getLogger(__name__)

SECOND_US: Final = 1_000_000
MINUTE_US: Final = 60 * SECOND_US
HOUR_US: Final = 60 * MINUTE_US

Aggregate = Literal["count", "sum", "small_count", "distinct"]


@dataclass(frozen=True)
class WindowFeature:
    """One streaming feature: an aggregate of the entity's events over ``(t - window, t]``."""

    name: str
    aggregate: Aggregate
    window_us: int


@dataclass(frozen=True)
class StreamKind:
    """An entity kind with streaming features, and where its rows go."""

    name: str
    join_key: str
    counterpart: str  # the other entity whose distinct values are counted
    view: str
    push_source: str
    table_file: str
    features: tuple[WindowFeature, ...]

    @property
    def feature_names(self) -> list[str]:
        """Feature names in view order."""
        return [f.name for f in self.features]


KINDS: Final = MappingProxyType(
    {
        "ip": StreamKind(
            name="ip",
            join_key=schema.IP_JOIN_KEY,
            counterpart=schema.CARD_ID,
            view="ip_stream_features",
            push_source="ip_stream_push",
            table_file="ip_stream_features.parquet",
            features=(
                WindowFeature("ip_rt_txn_count_5m", "count", 5 * MINUTE_US),
                WindowFeature("ip_rt_txn_count_1h", "count", HOUR_US),
                WindowFeature("ip_rt_amount_sum_5m", "sum", 5 * MINUTE_US),
                WindowFeature("ip_rt_amount_sum_1h", "sum", HOUR_US),
                WindowFeature("ip_rt_distinct_cards_10m", "distinct", 10 * MINUTE_US),
            ),
        ),
        "card": StreamKind(
            name="card",
            join_key=schema.CARD_JOIN_KEY,
            counterpart=schema.IP_ADDRESS,
            view="card_stream_features",
            push_source="card_stream_push",
            table_file="card_stream_features.parquet",
            features=(
                WindowFeature("card_rt_txn_count_5m", "count", 5 * MINUTE_US),
                WindowFeature("card_rt_txn_count_1h", "count", HOUR_US),
                WindowFeature("card_rt_amount_sum_5m", "sum", 5 * MINUTE_US),
                WindowFeature("card_rt_amount_sum_1h", "sum", HOUR_US),
                WindowFeature("card_rt_small_txn_count_1h", "small_count", HOUR_US),
                WindowFeature("card_rt_distinct_ips_10m", "distinct", 10 * MINUTE_US),
            ),
        ),
    }
)

#: Longest window of any streaming feature; the streaming views' TTL matches it.
MAX_WINDOW_US: Final = max(f.window_us for k in KINDS.values() for f in k.features)
#: Keys of the stream tables in a tables dict (next to aggregate()'s "ip", "card", "merchant").
STREAM_TABLES: Final = MappingProxyType({f"{k}_stream": kind for k, kind in KINDS.items()})
SMALL_AMOUNT_CENTS: Final = round(schema.SMALL_AMOUNT_THRESHOLD * 100)


def to_cents(amount: np.ndarray | float) -> np.ndarray:
    """Amounts as integer cents (round half to even), the unit every window sum uses."""
    return np.rint(np.asarray(amount, dtype=np.float64) * 100.0).astype(np.int64)


@dataclass(frozen=True)
class WindowEvents:
    """Events of one entity kind as arrays: entity code, time (µs), cents, counterpart code."""

    entity: np.ndarray
    t_us: np.ndarray
    cents: np.ndarray
    counterpart: np.ndarray


def window_features(
    kind: StreamKind, events: WindowEvents, query_entity: np.ndarray, query_t_us: np.ndarray
) -> dict[str, np.ndarray]:
    """Each feature of ``kind`` for every query (entity, as-of time ``T``) over ``(T - w, T]``.

    The one implementation behind both the live consumer and ``replay``: counts are int64,
    sums float64 (exact cents / 100), distinct counts int64. Vectorized with numpy.
    """
    n_entities = int(max(events.entity.max(initial=-1), query_entity.max(initial=-1))) + 1
    out = {
        f.name: np.zeros(len(query_t_us), dtype=np.float64 if f.aggregate == "sum" else np.int64)
        for f in kind.features
    }
    if len(query_t_us) == 0 or n_entities == 0:
        return out
    t0 = int(min(events.t_us.min(initial=query_t_us.min()), query_t_us.min()))
    t_end = int(max(events.t_us.max(initial=query_t_us.max()), query_t_us.max()))
    # Keys entity * span + (t - t0 + MAX_WINDOW): each entity's times form one sorted run and
    # T - w never reaches into the previous entity's run.
    span = t_end - t0 + 2 * MAX_WINDOW_US + 1
    per_chunk = max(1, (1 << 62) // span)  # entities per int64-safe chunk
    for first in range(0, n_entities, per_chunk):
        last = first + per_chunk
        ev_mask = (events.entity >= first) & (events.entity < last)
        q_idx = np.flatnonzero((query_entity >= first) & (query_entity < last))
        if len(q_idx) == 0:
            continue
        chunk = WindowEvents(
            entity=events.entity[ev_mask] - first,
            t_us=events.t_us[ev_mask] - t0 + MAX_WINDOW_US,
            cents=events.cents[ev_mask],
            counterpart=events.counterpart[ev_mask],
        )
        q_key = (query_entity[q_idx] - first) * span + (query_t_us[q_idx] - t0 + MAX_WINDOW_US)
        for name, values in _chunk_features(kind, chunk, q_key, span).items():
            out[name][q_idx] = values
    return out


def _chunk_features(
    kind: StreamKind, ev: WindowEvents, q_key: np.ndarray, span: int
) -> dict[str, np.ndarray]:
    key = ev.entity * span + ev.t_us
    order = np.argsort(key, kind="stable")
    keys = key[order]
    cents = ev.cents[order]
    prefix_cents = np.concatenate([[0], np.cumsum(cents)])
    prefix_small = np.concatenate([[0], np.cumsum(cents < SMALL_AMOUNT_CENTS)])
    hi = np.searchsorted(keys, q_key, side="right")
    out: dict[str, np.ndarray] = {}
    for feature in kind.features:
        if feature.aggregate == "distinct":
            out[feature.name] = _distinct(ev, span, q_key, feature.window_us)
            continue
        lo = np.searchsorted(keys, q_key - feature.window_us, side="right")
        if feature.aggregate == "count":
            out[feature.name] = (hi - lo).astype(np.int64)
        elif feature.aggregate == "sum":
            out[feature.name] = (prefix_cents[hi] - prefix_cents[lo]) / 100.0
        else:
            out[feature.name] = (prefix_small[hi] - prefix_small[lo]).astype(np.int64)
    return out


def _distinct(ev: WindowEvents, span: int, q_key: np.ndarray, width: int) -> np.ndarray:
    """Distinct counterparts among the entity's events in ``(T - width, T]``.

    An occurrence at ``t`` is its value's latest at or before ``T`` and inside the window iff
    ``t <= T < min(next occurrence of the value, t + width)``; count those intervals.
    """
    order = np.lexsort((ev.t_us, ev.counterpart, ev.entity))
    e, v, t = ev.entity[order], ev.counterpart[order], ev.t_us[order]
    next_t = np.full(len(t), np.iinfo(np.int64).max, dtype=np.int64)
    same = (e[1:] == e[:-1]) & (v[1:] == v[:-1])
    next_t[:-1] = np.where(same, t[1:], next_t[:-1])
    stop = np.minimum(next_t, t + width)
    starts = np.sort(e * span + t)
    stops = np.sort(e * span + stop)
    started = np.searchsorted(starts, q_key, side="right")
    stopped = np.searchsorted(stops, q_key, side="right")
    return (started - stopped).astype(np.int64)


def _exact_ties(
    events: WindowEvents, query_entity: np.ndarray, query_t_us: np.ndarray
) -> np.ndarray:
    """How many of the entity's events happened at exactly each query time."""
    counts = pd.DataFrame({"e": events.entity, "t": events.t_us}).value_counts()
    wanted = pd.MultiIndex.from_arrays([query_entity, query_t_us], names=["e", "t"])
    return counts.reindex(wanted, fill_value=0).to_numpy(dtype=np.int64)


def _rows(
    kind: StreamKind,
    entity_keys: np.ndarray,
    events: WindowEvents,
    query_entity: np.ndarray,
    query_t_us: np.ndarray,
) -> pd.DataFrame:
    """Feature rows stamped ``t + n µs`` (see the module docstring), sorted by time."""
    values = window_features(kind, events, query_entity, query_t_us)
    ties = np.maximum(_exact_ties(events, query_entity, query_t_us), 1)
    stamps = pd.to_datetime(query_t_us + ties, unit="us", utc=True).astype("datetime64[us, UTC]")
    frame = pd.DataFrame(
        {
            kind.join_key: entity_keys[query_entity].astype(object),
            schema.EVENT_TIMESTAMP: stamps,
            # Deterministic, so a redelivered event's row is an exact duplicate.
            schema.CREATED_TIMESTAMP: stamps,
            **{name: values[name] for name in kind.feature_names},
        }
    )
    # Events of one entity at one instant share their window and hence their row.
    frame = frame.drop_duplicates([kind.join_key, schema.EVENT_TIMESTAMP], keep="last")
    return frame.sort_values([schema.EVENT_TIMESTAMP, kind.join_key], kind="stable").reset_index(
        drop=True
    )


def _event_times_us(values: pd.Series) -> np.ndarray:
    stamps = pd.to_datetime(values, utc=True).dt.tz_convert(None)
    return stamps.to_numpy(dtype="datetime64[us]").astype(np.int64)


def stream_tables(transactions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Replay: the rows the live consumer writes, for a whole history at once.

    Keys are ``STREAM_TABLES`` ("ip_stream", "card_stream"); each frame has the join key,
    ``event_timestamp`` (event time + n µs), ``created_timestamp`` and the kind's features.
    Identical to the consumer's rows for a stream in event-time order.
    """
    t_us = _event_times_us(transactions[schema.EVENT_TIMESTAMP])
    cents = to_cents(transactions[schema.AMOUNT].to_numpy(dtype=np.float64))
    out: dict[str, pd.DataFrame] = {}
    for table, kind in STREAM_TABLES.items():
        entity, entity_keys = pd.factorize(transactions[kind.join_key], sort=False)
        counterpart, _ = pd.factorize(transactions[kind.counterpart], sort=False)
        events = WindowEvents(
            entity=entity.astype(np.int64),
            t_us=t_us,
            cents=cents,
            counterpart=counterpart.astype(np.int64),
        )
        out[table] = _rows(kind, np.asarray(entity_keys, dtype=object), events, events.entity, t_us)
    return out


def write_stream_tables(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Write the stream tables (keys of ``STREAM_TABLES``) into a repository's data folder."""
    return [
        write_feature_table(tables[name], Path(out_dir) / kind.table_file)
        for name, kind in STREAM_TABLES.items()
        if name in tables
    ]


def empty_stream_tables() -> dict[str, pd.DataFrame]:
    """Stream tables with no rows (a repository whose consumer has not written yet)."""
    columns = {
        schema.TRANSACTION_ID: pd.Series([], dtype=object),
        schema.EVENT_TIMESTAMP: pd.Series([], dtype="datetime64[ns, UTC]"),
        schema.AMOUNT: pd.Series([], dtype=np.float64),
        schema.IP_ADDRESS: pd.Series([], dtype=object),
        schema.CARD_ID: pd.Series([], dtype=object),
    }
    tables = stream_tables(pd.DataFrame(columns))
    # An empty object column would be written as Arrow's null type; appends need strings.
    return {
        name: frame.astype({STREAM_TABLES[name].join_key: "string"})
        for name, frame in tables.items()
    }


# --- live state -------------------------------------------------------------------------------


def _member(event: TransactionEvent, counterpart: str) -> str:
    return f"{event.transaction_id}|{int(to_cents(event.amount))}|{counterpart}"


class WindowState:
    """Each entity's recent events in Redis; adding an event twice is a no-op.

    One sorted set per entity, members ``transaction_id|cents|counterpart`` scored by event
    time (µs). Members older than the entity's newest event minus ``retention_us`` are pruned;
    a key idle for ``key_ttl_seconds`` (wall clock) expires.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "fraud:rt",
        retention_us: int = 2 * HOUR_US,
        key_ttl_seconds: int = 24 * 3600,
    ) -> None:
        if retention_us < MAX_WINDOW_US:
            raise ValueError("retention must cover the longest window")
        self.client = client
        self.prefix = prefix
        self.retention_us = retention_us
        self.key_ttl_seconds = key_ttl_seconds

    def key(self, kind: str, entity: str) -> str:
        """Redis key of one entity's event set."""
        return f"{self.prefix}:{kind}:{entity}"

    def apply(self, events: Sequence[TransactionEvent]) -> dict[str, pd.DataFrame]:
        """Add events, then compute each event's row from the state (one MULTI/EXEC per call).

        Returns rows per stream table ("ip_stream", "card_stream"), as ``stream_tables`` does.
        """
        grouped: dict[str, dict[str, list[TransactionEvent]]] = {}
        with self.client.pipeline(transaction=True) as pipe:
            for table, kind in STREAM_TABLES.items():
                by_entity: dict[str, list[TransactionEvent]] = defaultdict(list)
                for event in events:
                    by_entity[getattr(event, kind.join_key)].append(event)
                grouped[table] = by_entity
                for entity, entity_events in by_entity.items():
                    key = self.key(kind.name, entity)
                    pipe.zadd(
                        key,
                        {
                            _member(e, getattr(e, kind.counterpart)): e.event_time_us
                            for e in entity_events
                        },
                    )
                    oldest = min(e.event_time_us for e in entity_events)
                    # Read before pruning: one batch may span more than the retention.
                    pipe.zrangebyscore(key, f"({oldest - MAX_WINDOW_US}", "+inf", withscores=True)
                    newest = max(e.event_time_us for e in entity_events)
                    # Prune against this batch's newest event: after any sequence of batches
                    # the surviving set is the same as after one batch holding them all.
                    pipe.zremrangebyscore(key, "-inf", f"({newest - self.retention_us}")
                    pipe.expire(key, self.key_ttl_seconds)
            replies = pipe.execute()
        out: dict[str, pd.DataFrame] = {}
        cursor = 0
        for table, kind in STREAM_TABLES.items():
            by_entity = grouped[table]
            windows = []
            for _ in by_entity:
                windows.append(replies[cursor + 1])
                cursor += 4
            out[table] = _rows_from_state(kind, by_entity, windows)
        return out

    def add(self, events: Sequence[TransactionEvent]) -> None:
        """Add events without computing rows (seeding the state from a replayed history)."""
        with self.client.pipeline(transaction=False) as pipe:
            for kind in KINDS.values():
                members: dict[str, dict[str, int]] = defaultdict(dict)
                for e in events:
                    members[getattr(e, kind.join_key)][_member(e, getattr(e, kind.counterpart))] = (
                        e.event_time_us
                    )
                for entity, entity_members in members.items():
                    key = self.key(kind.name, entity)
                    pipe.zadd(key, entity_members)
                    newest = max(entity_members.values())
                    pipe.zremrangebyscore(key, "-inf", f"({newest - self.retention_us}")
                    pipe.expire(key, self.key_ttl_seconds)
            pipe.execute()

    def members(self, kind: str, entity: str) -> list[tuple[str, int]]:
        """(member, time µs) of one entity, oldest first (for inspection and tests)."""
        reply = cast(list[Any], self.client.zrange(self.key(kind, entity), 0, -1, withscores=True))
        return [(m.decode(), int(s)) for m, s in reply]


def _rows_from_state(
    kind: StreamKind,
    by_entity: dict[str, list[TransactionEvent]],
    windows: list[list[tuple[bytes, float]]],
) -> pd.DataFrame:
    entity_keys = np.asarray(list(by_entity), dtype=object)
    ev_entity: list[int] = []
    ev_t: list[int] = []
    ev_cents: list[int] = []
    ev_counterpart: list[str] = []
    for code, window in enumerate(windows):
        for member, score in window:
            _, cents, counterpart = member.decode().rsplit("|", 2)
            ev_entity.append(code)
            ev_t.append(int(score))
            ev_cents.append(int(cents))
            ev_counterpart.append(counterpart)
    counterpart_codes, _ = pd.factorize(pd.Series(ev_counterpart, dtype=object), sort=False)
    events = WindowEvents(
        entity=np.asarray(ev_entity, dtype=np.int64),
        t_us=np.asarray(ev_t, dtype=np.int64),
        cents=np.asarray(ev_cents, dtype=np.int64),
        counterpart=counterpart_codes.astype(np.int64),
    )
    q_entity = np.asarray(
        [code for code, evs in enumerate(by_entity.values()) for _ in evs], dtype=np.int64
    )
    q_t = np.asarray([e.event_time_us for evs in by_entity.values() for e in evs], dtype=np.int64)
    return _rows(kind, entity_keys, events, q_entity, q_t)


# --- writing and consuming --------------------------------------------------------------------


class FeatureWriter(Protocol):
    """Where rows go: Feast push sources in production."""

    def write(self, rows: dict[str, pd.DataFrame], to: PushMode) -> None:
        """Write rows per stream table to the online store, the offline store or both."""
        ...


class FeastPushWriter:
    """Writes rows through ``FeatureStore.push`` into the streaming views' push sources."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def write(self, rows: dict[str, pd.DataFrame], to: PushMode) -> None:
        """One push per non-empty table."""
        for table, frame in rows.items():
            if len(frame):
                self.store.push(STREAM_TABLES[table].push_source, frame, to=to)


def latest_rows(rows: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The newest row of each entity: all the online store keeps."""
    out = {}
    for table, frame in rows.items():
        key = STREAM_TABLES[table].join_key
        out[table] = frame.drop_duplicates(key, keep="last").reset_index(drop=True)
    return out


@dataclass
class ConsumerStats:
    """What a consumer run did."""

    events: int = 0
    batches: int = 0
    dead_letters: int = 0
    offline_flushes: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"{self.events} events in {self.batches} batches ({self.events / elapsed:.0f}/s), "
            f"{self.offline_flushes} offline flushes, {self.dead_letters} dead letters"
        )


class _OfflineWriter:
    """Pushes buffered rows offline on a thread of its own, then acknowledges their events.

    One push at a time, in submission order. The first failure is kept: later submissions are
    dropped unwritten and unacknowledged (they come back after a restart), and the consumer's
    thread re-raises the failure at its next step.
    """

    def __init__(
        self,
        writer: FeatureWriter,
        acknowledge: Callable[[list[str]], None],
    ) -> None:
        self.writer = writer
        self.acknowledge = acknowledge
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[dict[str, pd.DataFrame], list[str]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="offline-writer", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        """Nothing queued or being written."""
        return self._queue.unfinished_tasks == 0

    def submit(self, rows: dict[str, pd.DataFrame], ids: list[str]) -> None:
        """Queue one offline push and the acknowledgement that follows it."""
        self._queue.put((rows, ids))

    def wait(self) -> None:
        """Until every queued push and acknowledgement is done (or dropped after a failure)."""
        self._queue.join()

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    rows, ids = item
                    self.writer.write(rows, PushMode.OFFLINE)
                    self.acknowledge(ids)
            except BaseException as exc:  # handed to the consumer's thread, which re-raises it
                logger.error("offline push failed; its events stay unacknowledged: %s", exc)
                self.error = exc
            finally:
                self._queue.task_done()


class StreamConsumer:
    """Read -> apply to window state -> write rows -> acknowledge, at least once.

    With ``offline_flush_seconds == 0`` each batch is pushed with
    ``PushMode.ONLINE_AND_OFFLINE`` and acknowledged. Otherwise the newest row per entity is
    pushed online at once (freshness), while all rows are buffered and pushed offline at most
    every ``offline_flush_seconds`` by a background thread (``offline_writer``, by default
    ``writer``): the file offline store rewrites its whole table on every append, which must
    not hold up the next event. A batch is acknowledged only after its offline push, so a crash
    before it redelivers the events and the idempotent writes repeat.
    """

    def __init__(
        self,
        source: EventSource,
        state: WindowState,
        writer: FeatureWriter,
        batch_size: int = 500,
        block_ms: int = 100,
        offline_flush_seconds: float = 2.0,
        after_write: Callable[[list[str]], None] | None = None,
        offline_writer: FeatureWriter | None = None,
    ) -> None:
        self.source = source
        self.state = state
        self.writer = writer
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.offline_flush_seconds = offline_flush_seconds
        # Called with the ids of a written batch just before they are acknowledged (on the
        # offline writer's thread when buffering); tests use it to inject a crash between the
        # write and the acknowledgement.
        self.after_write = after_write
        self.stats = ConsumerStats()
        self._pending_rows: dict[str, list[pd.DataFrame]] = defaultdict(list)
        self._pending_ids: list[str] = []
        self._next_flush = time.monotonic() + offline_flush_seconds
        self._offline_writer = offline_writer or writer
        self._offline: _OfflineWriter | None = None  # started by the first buffered batch

    def step(self) -> int:
        """Read and process one batch; returns how many entries were read."""
        self._raise_offline_error()
        messages = self.source.read(self.batch_size, self.block_ms)
        if messages:
            self._process(messages)
        if (
            self._offline is not None
            and self._pending_ids
            and time.monotonic() >= self._next_flush
            and self._offline.idle  # else keep buffering: the next push takes it all
        ):
            self._submit_offline()
        return len(messages)

    def _process(self, messages: list[StreamMessage]) -> None:
        events: list[TransactionEvent] = []
        ids: list[str] = []
        for message in messages:
            if message.event is None:
                logger.error("dead-lettering entry %s: %s", message.message_id, message.error)
                self.source.dead_letter(message)
                self.stats.dead_letters += 1
                continue
            events.append(message.event)
            ids.append(message.message_id)
        self.stats.batches += 1
        self.stats.events += len(events)
        if not events:
            return
        rows = self.state.apply(events)
        if self.offline_flush_seconds <= 0:
            self.writer.write(rows, PushMode.ONLINE_AND_OFFLINE)
            self._acknowledge(ids)
            return
        self.writer.write(latest_rows(rows), PushMode.ONLINE)
        for table, frame in rows.items():
            self._pending_rows[table].append(frame)
        self._pending_ids.extend(ids)

    def _submit_offline(self) -> None:
        self._next_flush = time.monotonic() + self.offline_flush_seconds
        if not self._pending_ids:
            return
        if self._offline is None:
            self._offline = _OfflineWriter(self._offline_writer, self._acknowledge)
        rows = {
            table: pd.concat(frames, ignore_index=True)
            .sort_values(schema.EVENT_TIMESTAMP, kind="stable")
            .reset_index(drop=True)
            for table, frames in self._pending_rows.items()
        }
        self._offline.submit(rows, self._pending_ids)
        self.stats.offline_flushes += 1
        self._pending_rows = defaultdict(list)
        self._pending_ids = []

    def flush(self) -> None:
        """Push every buffered row offline and acknowledge its events; wait until done."""
        self._submit_offline()
        if self._offline is not None:
            self._offline.wait()
        self._raise_offline_error()

    def close(self) -> None:
        """Stop the offline writer's thread (after what it has queued)."""
        if self._offline is not None:
            self._offline.close()
            self._offline = None

    def _raise_offline_error(self) -> None:
        if self._offline is not None and self._offline.error is not None:
            raise self._offline.error

    def _acknowledge(self, ids: list[str]) -> None:
        if self.after_write is not None:
            self.after_write(ids)
        self.source.ack(ids)

    def run(
        self,
        stop: threading.Event | None = None,
        max_events: int | None = None,
        idle_exit_seconds: float | None = None,
    ) -> ConsumerStats:
        """Consume until ``stop`` is set, ``max_events`` are processed, or the stream has been
        idle for ``idle_exit_seconds``; buffered rows are pushed and acknowledged before it
        returns. After an error, events not yet acknowledged stay pending and come back."""
        stop = stop or threading.Event()
        idle_since = time.monotonic()
        next_log = time.monotonic() + 10.0
        try:
            while not stop.is_set():
                if self.step():
                    idle_since = time.monotonic()
                elif (
                    idle_exit_seconds is not None
                    and time.monotonic() - idle_since >= idle_exit_seconds
                ):
                    break
                if max_events is not None and self.stats.events >= max_events:
                    break
                if time.monotonic() >= next_log:
                    logger.info("stream consumer: %s", self.stats.summary())
                    next_log = time.monotonic() + 10.0
            self.flush()
        finally:
            self.close()
        return self.stats
