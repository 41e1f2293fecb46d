"""The stream consumer: read, apply to the window state, write rows, acknowledge.

Rows go through Feast's push API (the push sources named by the catalogue), online for
serving and offline for training. Idempotency (at-least-once delivery, exactly-once effect):
each batch runs, in order, add the events to the window state and read the windows back (one
MULTI/EXEC), push the rows online, push them offline (buffered, on a background thread), and
only then acknowledge. A crash anywhere before the acknowledgement redelivers the batch;
re-running it writes the same rows again (same values, same timestamps: the online store keeps
one, the offline store gets identical duplicates that a point-in-time join cannot tell apart).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode

from feature_pipelines.schema import EVENT_TIMESTAMP
from feature_pipelines.streaming.source import EventSource, StreamMessage
from feature_pipelines.streaming.state import WindowState
from feature_pipelines.streaming.windows import WindowCatalogue

logger = logging.getLogger(__name__)


class FeatureWriter(Protocol):
    """Where rows go: Feast push sources in production."""

    def write(self, rows: dict[str, pd.DataFrame], to: PushMode) -> None:
        """Write rows per stream table to the online store, the offline store or both."""
        ...


class FeastPushWriter:
    """Writes rows through ``FeatureStore.push`` into the catalogue's push sources."""

    def __init__(self, store: FeatureStore, catalogue: WindowCatalogue) -> None:
        self.store = store
        self.catalogue = catalogue

    def write(self, rows: dict[str, pd.DataFrame], to: PushMode) -> None:
        """One push per non-empty table."""
        for table, frame in rows.items():
            if len(frame):
                self.store.push(self.catalogue.tables[table].push_source, frame, to=to)


def latest_rows(
    catalogue: WindowCatalogue, rows: dict[str, pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    """The newest row of each entity: all the online store keeps."""
    out = {}
    for table, frame in rows.items():
        key = catalogue.tables[table].join_key
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
        source: EventSource[Any],
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

    def _process(self, messages: list[StreamMessage[Any]]) -> None:
        events: list[Any] = []
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
        self.writer.write(latest_rows(self.state.catalogue, rows), PushMode.ONLINE)
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
            .sort_values(EVENT_TIMESTAMP, kind="stable")
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
