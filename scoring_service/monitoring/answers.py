"""What the score routes hand to the prediction log, and the recent answers kept for explanations.

A score route calls :meth:`AnswerLog.record` (or ``record_columns`` for a batch answered in
columns) once per call, after its answer is built and before it leaves: one ``LogEntry`` per
scored object, handed to ``PredictionLog.offer`` (a bounded queue, never blocking). Sampling is
decided once per call by its request id, before any entry is built, so an unsampled call costs
nothing. Entries are built from what the answer already holds (scores, labels, reasons, entity
statuses and ages) plus the model input rows the scorer kept; a large batch builds them in a
worker thread.

Every logged answer also goes into :class:`RecentAnswers`, a bounded in-memory index by business
id that the explanation route reads first (answers still in the writer's queue or journal are
not in the parquet yet).

Every answer logs the input row of the package that decided it, whatever the deployment: the
direct path's model, a challenger, a fallback step. An ensemble's answer logs its members' rows
side by side, each input named ``<package>|<weight>|<feature>`` (``member_input_names``):
``weight`` is the member's share of a weighted mean, or ``max`` when the largest member score
answers; ``ensemble_members`` reads the names back for the explanation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from feature_repo import clock
from feature_repo.online import STATUS_NAMES
from scoring_service.monitoring.prediction_log import LogEntry, PredictionLog
from scoring_service.stages.mapping import MappedRequests
from scoring_service.stages.outcomes import OFF_LOOP_ROWS, Scored, ScoredColumns

DEFAULT_DEPLOYMENT = "default"
"""The deployment name logged when the service runs a single package."""

MEMBER_SEPARATOR = "|"
"""Separates package, weight and input in the logged input names of an ensemble's answer."""
MAX_RULE = "max"
"""The weight logged for members of an ensemble whose largest member score answers."""


@dataclass(frozen=True)
class LoggedMember:
    """One ensemble member's part of a logged input row."""

    package: str
    weight: float | None  # None: the ``max`` rule (the largest member score answered)
    start: int
    features: list[str]


def member_input_names(
    members: Sequence[tuple[str, float | None, Sequence[str]]],
) -> tuple[str, ...]:
    """The logged input names of an ensemble's answer: each member's inputs, in member order,
    as ``<package>|<weight>|<feature>`` (weight None: the ``max`` rule)."""
    return tuple(
        MEMBER_SEPARATOR.join([package, MAX_RULE if weight is None else repr(weight), feature])
        for package, weight, features in members
        for feature in features
    )


def ensemble_members(names: Sequence[str]) -> list[LoggedMember] | None:
    """The members of a logged ensemble row, from its input names; None for one package's row."""
    if not names or MEMBER_SEPARATOR not in names[0]:
        return None
    members: list[LoggedMember] = []
    for i, name in enumerate(names):
        package, weight, feature = name.split(MEMBER_SEPARATOR, 2)
        share = None if weight == MAX_RULE else float(weight)
        if not members or members[-1].package != package:
            members.append(LoggedMember(package, share, i, []))
        members[-1].features.append(feature)
    return members


class RecentAnswers:
    """The latest logged answer per business id, for at most ``capacity`` ids (oldest out).

    Written from the event loop and from worker threads (large batches): a lock keeps it whole.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, LogEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entries: Sequence[LogEntry]) -> None:
        """Keep these entries (a later answer for the same id replaces an earlier one)."""
        with self._lock:
            for entry in entries:
                if entry.business_id is None:
                    continue
                self._entries[entry.business_id] = entry
                self._entries.move_to_end(entry.business_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def get(self, business_id: str) -> LogEntry | None:
        """The latest logged answer for this id, if still kept."""
        with self._lock:
            return self._entries.get(business_id)


class AnswerLog:
    """One domain's prediction log and recent-answers index, fed by its score routes."""

    def __init__(
        self,
        domain: str,
        log: PredictionLog,
        recent: RecentAnswers,
        *,
        deployment: str = DEFAULT_DEPLOYMENT,
    ) -> None:
        self.domain = domain
        self.log = log
        self.recent = recent
        self.deployment = deployment

    def sampled(self, request_id: str) -> bool:
        """Whether this call's answers are logged."""
        return self.log.sampled(request_id)

    def _offer(self, entries: list[LogEntry]) -> None:
        self.log.offer(entries)
        self.recent.add(entries)

    async def record(
        self,
        request_id: str,
        ids: Sequence[str | None],
        mapped: MappedRequests,
        scored: Sequence[Scored],
        *,
        default_version: str,
        feature_names: Sequence[str],
        arrived: float,
    ) -> None:
        """Log the answers of one call, row by row (``Scored`` per object)."""
        if not self.sampled(request_id):
            return
        latency_ms = (time.monotonic() - arrived) * 1000.0

        def build() -> list[LogEntry]:
            now = clock.now()
            keys = _key_rows(mapped, len(scored))
            return [
                LogEntry(
                    request_id=request_id,
                    business_id=ids[i],
                    ts=now,
                    domain=self.domain,
                    deployment=self.deployment,
                    variant=result.variant,
                    model_version=result.model_version or default_version,
                    keys=keys[i],
                    features=_row(result.inputs),
                    feature_names=(
                        ()
                        if result.inputs is None
                        else result.input_names
                        if result.input_names is not None
                        else feature_names
                    ),
                    statuses={k: f.status for k, f in result.freshness.items()},
                    age_seconds={k: f.age_seconds for k, f in result.freshness.items()},
                    score=result.score,
                    label=result.label,
                    reasons=result.reasons,
                    latency_ms=latency_ms,
                )
                for i, result in enumerate(scored)
            ]

        if len(scored) > OFF_LOOP_ROWS:
            await asyncio.to_thread(lambda: self._offer(build()))
        else:
            self._offer(build())

    async def record_columns(
        self,
        request_id: str,
        ids: Sequence[str | None],
        mapped: MappedRequests,
        columns: ScoredColumns,
        *,
        default_version: str,
        feature_names: Sequence[str],
        arrived: float,
    ) -> None:
        """Log the answers of one call scored in columns (score-batch)."""
        if not self.sampled(request_id):
            return
        latency_ms = (time.monotonic() - arrived) * 1000.0
        n = len(columns)

        def build() -> list[LogEntry]:
            now = clock.now()
            keys = _key_rows(mapped, n)
            variants = columns.variants or ["champion"] * n
            versions = columns.model_versions or [columns.default_version or default_version] * n
            matrix = columns.inputs
            names = feature_names if matrix is not None else ()
            row_names = columns.input_names  # per row where rows were decided by several packages
            status_columns = list(columns.status.items())
            age_columns = {key: columns.age_seconds[key] for key, _ in status_columns}
            entries = []
            for i in range(n):
                row = None if matrix is None else matrix[i]
                if row is None:
                    row_feature_names: Sequence[str] = ()
                else:
                    row_feature_names = names if row_names is None else row_names[i]
                entries.append(
                    LogEntry(
                        request_id=request_id,
                        business_id=ids[i],
                        ts=now,
                        domain=self.domain,
                        deployment=self.deployment,
                        variant=variants[i],
                        model_version=versions[i] or default_version,
                        keys=keys[i],
                        features=_row(row),
                        feature_names=row_feature_names,
                        statuses={key: STATUS_NAMES[values[i]] for key, values in status_columns},
                        age_seconds={
                            key: None if ages[i] != ages[i] else ages[i]
                            for key, ages in age_columns.items()
                        },
                        score=columns.scores[i],
                        label=columns.labels[i],
                        reasons=columns.reasons[i],
                        latency_ms=latency_ms,
                    )
                )
            return entries

        if n > OFF_LOOP_ROWS:
            await asyncio.to_thread(lambda: self._offer(build()))
        else:
            self._offer(build())

    def close(self) -> None:
        """Drain the queue and roll the journal (graceful shutdown loses nothing)."""
        self.log.close()


def _key_rows(mapped: MappedRequests, n: int) -> list[Mapping[str, str | None]]:
    columns = list(mapped.keys.items())
    return [{key: values[i] for key, values in columns} for i in range(n)]


def _row(inputs: np.ndarray | None) -> Sequence[float]:
    """A model input row as the log stores it (float32 values; the writer thread converts)."""
    return () if inputs is None else cast(Sequence[float], inputs)
