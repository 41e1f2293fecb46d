"""The request path: map -> read features -> predict -> label, for one or many requests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields

import numpy as np

from feature_repo.transforms import model_input
from scoring_service import metrics
from scoring_service.batcher import BatcherClosed, MicroBatcher
from scoring_service.domain import MappedRequests
from scoring_service.drift import DriftMonitor
from scoring_service.errors import NotReady
from scoring_service.features import STATUS_NAMES, FeatureBatch, OnlineFeatureReader
from scoring_service.registry import LoadedModel
from scoring_service.schemas import EntityFreshness

logger = logging.getLogger(__name__)

OFF_LOOP_ROWS = 256
"""Above this many requests in one call, decoding and the model call move off the event loop,
so other requests keep flowing."""


@dataclass
class Scored:
    """The outcome for one request."""

    score: float | None
    label: str
    reasons: list[str]
    freshness: dict[str, EntityFreshness]


class Scorer:
    """Scores mapped requests against one model and one online store.

    ``score`` is the service's path: small calls join a micro-batch (one feature read and one
    model call for every request that arrives while the previous batch is being scored, see
    ``scoring_service/batcher.py``); larger calls go straight through. Readers with a
    ``read_async`` (the Redis fast reader) read on the event loop, others in a worker thread.
    """

    def __init__(
        self,
        model: LoadedModel,
        reader: OnlineFeatureReader,
        *,
        batch_max_rows: int = 64,
        batch_max_wait_s: float = 0.001,
        micro_batching: bool = True,
    ) -> None:
        self.model = model
        self.reader = reader
        self._read_async: Callable[..., Awaitable[FeatureBatch]] | None
        self._read_async = getattr(reader, "read_async", None)
        version = model.version_label
        # Labelled metric children are looked up once, not per request.
        self._seconds = {
            stage: metrics.STAGE_SECONDS.labels(stage, version)
            for stage in ("features", "predict", "post_process")
        }
        self._labels = {
            label: metrics.LABELS.labels(label, version)
            for label in ("not_fraud", "suspicious", "highly_suspicious", "uncertain")
        }
        self._keys = [view.join_key for view in model.layout.views]
        self.drift = DriftMonitor.for_model(model)  # sliding-window drift and freshness gauges
        self.batcher: MicroBatcher[MappedRequests, list[Scored]] | None = (
            MicroBatcher(self._score_batch, max_size=batch_max_rows, max_wait_s=batch_max_wait_s)
            if micro_batching
            else None
        )

    def model_input(self, batch: FeatureBatch, mapped: MappedRequests) -> np.ndarray:
        """The model's input matrix: stored, then on-demand features, then request values."""
        on_demand = self.model.on_demand
        computed = (
            on_demand.compute(batch.values, mapped.request_fields) if on_demand.width else None
        )
        return model_input(batch.values, computed, mapped.request_values)

    def score_sync(self, mapped: MappedRequests) -> list[Scored]:
        """Blocking path: one feature read and one model call for all requests."""
        started = time.perf_counter()
        batch = self.reader.read(mapped.keys)
        self._seconds["features"].observe(time.perf_counter() - started)
        return self.predict_and_label(batch, mapped)

    def predict_and_label(self, batch: FeatureBatch, mapped: MappedRequests) -> list[Scored]:
        """One model call for the requests whose features were read, then their labels."""
        started = time.perf_counter()
        matrix = self.model_input(batch, mapped)
        scores = self.model.predictor.predict(np.ascontiguousarray(matrix, dtype=np.float32))
        predicted = time.perf_counter()
        self._seconds["predict"].observe(predicted - started)
        self.drift.observe(matrix, scores, batch)  # copies into a ring buffer; summarised later
        policy = self.model.policy
        statuses = {key: batch.status[key].tolist() for key in self._keys}
        ages = {key: batch.age_seconds[key].tolist() for key in self._keys}
        # One answer object per (status, age) within the batch: snapshots are hourly, so many
        # entities of a batch share their age.
        answers: dict[tuple[int, float], EntityFreshness] = {}
        counts: Counter[str] = Counter()
        out: list[Scored] = []
        for i, score in enumerate(scores.tolist()):
            row_status = {key: statuses[key][i] for key in self._keys}
            label, reasons = policy.decide(score, matrix[i], row_status)
            freshness = {}
            for key, status in row_status.items():
                age = ages[key][i]
                seen = (status, age if age == age else -1.0)  # NaN is not a usable key
                answer = answers.get(seen)
                if answer is None:
                    answer = answers[seen] = EntityFreshness(
                        status=STATUS_NAMES[status],  # type: ignore[arg-type]
                        age_seconds=None if age != age else round(age, 3),  # NaN: no row
                    )
                freshness[key] = answer
            counts[label] += 1
            out.append(Scored(score, label, reasons, freshness))
        for label, n in counts.items():
            self._labels[label].inc(n)
        self._seconds["post_process"].observe(time.perf_counter() - predicted)
        return out

    async def score_now(self, mapped: MappedRequests) -> list[Scored]:
        """One feature read and one model call for these requests, without batching."""
        started = time.perf_counter()
        if self._read_async is None:
            return await asyncio.to_thread(self.score_sync, mapped)
        large = len(mapped.request_values) > OFF_LOOP_ROWS
        batch = await self._read_async(mapped.keys, decode_off_loop=large)
        self._seconds["features"].observe(time.perf_counter() - started)
        if large:
            # A large call would hold the event loop for its whole model call and labelling.
            return await asyncio.to_thread(self.predict_and_label, batch, mapped)
        return self.predict_and_label(batch, mapped)

    async def score(self, mapped: MappedRequests) -> list[Scored]:
        """Score n requests: small calls join the next micro-batch, large ones go alone."""
        n = len(mapped.request_values)
        if self.batcher is None or n >= self.batcher.max_size:
            return await self.score_now(mapped)
        try:
            return await self.batcher.submit(mapped, n)
        except BatcherClosed as exc:
            raise NotReady("The scoring service is stopping; retry in a moment.") from exc

    async def _score_batch(self, items: list[MappedRequests]) -> list[list[Scored]]:
        """A micro-batch: merge, score once, hand each caller its rows."""
        if len(items) == 1:
            return [await self.score_now(items[0])]
        results = await self.score_now(merge_mapped(items))
        out, start = [], 0
        for item in items:
            n = len(item.request_values)
            out.append(results[start : start + n])
            start += n
        return out

    async def aclose(self) -> None:
        """Finish the batches in progress; take no more."""
        if self.batcher is not None:
            await self.batcher.close()


def merge_mapped(items: list[MappedRequests]) -> MappedRequests:
    """Concatenate mapped requests, field by field (lists, dicts of lists, arrays by rows)."""
    merged: dict[str, object] = {}
    for spec in fields(MappedRequests):
        values = [getattr(item, spec.name) for item in items]
        first = values[0]
        if isinstance(first, np.ndarray):
            merged[spec.name] = np.concatenate(values, axis=0)
        elif isinstance(first, list):
            merged[spec.name] = [x for value in values for x in value]
        elif isinstance(first, dict):
            merged[spec.name] = {key: [x for value in values for x in value[key]] for key in first}
        else:
            raise TypeError(f"cannot merge MappedRequests.{spec.name} of type {type(first)}")
    return MappedRequests(**merged)  # type: ignore[arg-type]
