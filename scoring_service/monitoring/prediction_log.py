"""The service's writer of the prediction log, off the hot path.

Scoring hands each answer to :meth:`PredictionLog.offer`, which never blocks: entries go into a
bounded queue, and when it is full they are dropped and counted
(``scoring_prediction_log_dropped_total``), so a slow disk can never slow an answer. A writer
thread drains the queue and appends the entries to a journal (an Arrow IPC stream, flushed to
the operating system after every append); every ``roll_seconds`` the journal becomes parquet in
the log's date partitions (``feature_repo.prediction_log``) and is removed.

What a failure can lose:

- graceful shutdown (SIGTERM, the lifespan's end): nothing; the queue is drained, the journal
  rolled;
- the process killed (SIGKILL, a crash): at most the entries offered but not yet appended:
  those in the queue and the batch the writer had taken from it, ``2 * queue_size + 1`` at
  most and in practice the last few milliseconds; the journal of a killed process is turned
  into parquet by the next start (``recover``);
- the machine losing power: also what the operating system had not written to disk.

Sampling (``sample_rate``) keeps a deterministic share of requests by their request id.

What it keeps of people: entity ids are written as their keyed hash (``id_key``; None keeps
them raw, when configured so), the files and folders are the service user's only, and date
partitions older than ``retention_days`` are deleted at start and whenever the journal rolls.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from feature_repo import clock
from feature_repo import prediction_log as log_format
from scoring_service.core import metrics

logger = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal.arrows"


@dataclass(frozen=True)
class LogEntry:
    """One answer, as the log keeps it."""

    request_id: str
    business_id: str | None
    ts: datetime
    domain: str
    deployment: str
    variant: str
    model_version: str
    keys: Mapping[str, str | None]
    features: Sequence[float]
    feature_names: Sequence[str]
    statuses: Mapping[str, str]
    age_seconds: Mapping[str, float | None]
    score: float | None
    label: str
    reasons: Sequence[str]
    latency_ms: float


_STOP = object()


class PredictionLog:
    """A bounded, non-blocking prediction log for one domain's join keys."""

    def __init__(
        self,
        root: Path,
        join_keys: Sequence[str],
        *,
        sample_rate: float = 1.0,
        queue_size: int = 10_000,
        roll_seconds: float = 60.0,
        id_key: bytes | None = None,
        retention_days: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.id_key = id_key  # None: entity ids written as they are
        self.retention_days = retention_days  # None: partitions kept forever
        self.join_keys = list(join_keys)
        self.schema = log_format.schema(self.join_keys)
        self.sample_rate = sample_rate
        self.roll_seconds = roll_seconds
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._dropped = metrics.PREDICTION_LOG_DROPPED
        self._written = metrics.PREDICTION_LOG_WRITTEN
        self._journal_dir = self.root / "_journal"
        self._thread: threading.Thread | None = None
        self.rows_written = 0

    # --- the hot path --------------------------------------------------------------------------

    def sampled(self, request_id: str) -> bool:
        """Whether this request is in the sample (the same answer for the same id)."""
        if self.sample_rate >= 1.0:
            return True
        return zlib.crc32(request_id.encode()) < self.sample_rate * 2**32

    def offer(self, entries: Sequence[LogEntry]) -> None:
        """Queue entries for writing; drop (and count) what does not fit. Never blocks."""
        for entry in entries:
            if not self.sampled(entry.request_id):
                continue
            try:
                self._queue.put_nowait(entry)
            except queue.Full:
                self._dropped.inc()

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Turn journals left by a killed process into parquet, delete partitions past their
        retention, then start the writer."""
        log_format.private_folder(self.root)
        self.recover()
        self.expire()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Drain the queue, roll the journal, stop the writer (graceful shutdown loses nothing)."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def recover(self) -> int:
        """Convert journals of earlier processes to parquet; the number of rows recovered."""
        rows = 0
        if not self._journal_dir.is_dir():
            return 0
        for journal in sorted(self._journal_dir.glob(f"*{JOURNAL_SUFFIX}")):
            table = _read_journal(journal, self.schema)
            if table.num_rows:
                log_format.write(self.root, table, journal.name.removesuffix(JOURNAL_SUFFIX))
                rows += table.num_rows
            journal.unlink()
        if rows:
            logger.warning("prediction log: recovered %d rows from an interrupted journal", rows)
        return rows

    def expire(self) -> list[Path]:
        """Delete the date partitions older than the retention period; the ones deleted."""
        if self.retention_days is None:
            return []
        expired = log_format.expired_partitions(self.root, self.retention_days, clock.now())
        for folder in expired:
            shutil.rmtree(folder, ignore_errors=True)
        if expired:
            logger.info(
                "prediction log: deleted %d partitions past %d days (%s .. %s)",
                len(expired),
                self.retention_days,
                expired[0].name,
                expired[-1].name,
            )
        return expired

    # --- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        log_format.private_folder(self._journal_dir)
        journal: _Journal | None = None
        stopping = False
        while not stopping:
            deadline = journal.opened + self.roll_seconds if journal else None
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            batch: list[LogEntry] = []
            for candidate in [item, *self._drain()]:
                if candidate is _STOP:
                    stopping = True
                elif isinstance(candidate, LogEntry):
                    batch.append(candidate)
            try:
                if batch:
                    journal = journal or _Journal.open(self._journal_dir, self.schema)
                    journal.append(self._table(batch))
                    self.rows_written += len(batch)
                    self._written.inc(len(batch))
                if journal and (stopping or time.monotonic() >= journal.opened + self.roll_seconds):
                    journal.roll(self.root)
                    journal = None
                    self.expire()
            except Exception:  # a full disk must not take the writer down
                logger.exception("prediction log: %d entries could not be written", len(batch))
                self._dropped.inc(len(batch))

    def _drain(self) -> list[object]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def _table(self, entries: list[LogEntry]) -> pa.Table:
        columns: dict[str, list[object]] = {name: [] for name in self.schema.names}
        for e in entries:
            columns[log_format.REQUEST_ID].append(e.request_id)
            columns[log_format.BUSINESS_ID].append(e.business_id)
            columns[log_format.TS].append(e.ts)
            columns[log_format.DOMAIN].append(e.domain)
            columns[log_format.DEPLOYMENT].append(e.deployment)
            columns[log_format.VARIANT].append(e.variant)
            columns[log_format.MODEL_VERSION].append(e.model_version)
            for key in self.join_keys:
                columns[key].append(self._entity_id(e.keys.get(key)))
            columns[log_format.FEATURES].append(list(e.features))
            columns[log_format.FEATURE_NAMES].append(list(e.feature_names))
            columns[log_format.STATUSES].append(list(e.statuses.items()))
            columns[log_format.AGE_SECONDS].append(list(e.age_seconds.items()))
            columns[log_format.SCORE].append(e.score)
            columns[log_format.LABEL].append(e.label)
            columns[log_format.REASONS].append(list(e.reasons))
            columns[log_format.LATENCY_MS].append(e.latency_ms)
        return pa.Table.from_pydict(columns, schema=self.schema)

    def _entity_id(self, value: str | None) -> str | None:
        if value is None or self.id_key is None:
            return value
        return log_format.pseudonymize(value, self.id_key)


class _Journal:
    """An Arrow IPC stream of appended batches, flushed to the OS after each append."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.opened = time.monotonic()
        # Created this user's only before anything is written to it.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, log_format.FILE_MODE))
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, schema)

    @classmethod
    def open(cls, folder: Path, schema: pa.Schema) -> _Journal:
        stamp = clock.now().strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}{JOURNAL_SUFFIX}"
        return cls(folder / name, schema)

    def append(self, table: pa.Table) -> None:
        self._writer.write_table(table)
        self._sink.flush()

    def roll(self, root: Path) -> None:
        """Close the journal, write its rows as parquet partitions, remove it."""
        self._writer.close()
        self._sink.close()
        table = _read_journal(self.path, None)
        if table.num_rows:
            log_format.write(root, table, self.path.name.removesuffix(JOURNAL_SUFFIX))
        self.path.unlink()


def _read_journal(path: Path, schema: pa.Schema | None) -> pa.Table:
    """Every complete batch of a journal; a batch cut short by a kill is left out."""
    batches = []
    try:
        with pa.OSFile(str(path), "rb") as source:
            reader = pa.ipc.open_stream(source)
            schema = reader.schema
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
    except (pa.ArrowInvalid, OSError) as exc:
        logger.warning("prediction log: journal %s ends early (%s); kept what was whole", path, exc)
    if schema is None:
        return pa.table({})
    return pa.Table.from_batches(batches, schema=schema)
