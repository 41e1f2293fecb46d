"""The request path: map -> read features -> predict -> label, for one or many requests."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from scoring_service import metrics
from scoring_service.domain import MappedRequests
from scoring_service.features import STATUS_NAMES, OnlineFeatureReader
from scoring_service.registry import LoadedModel
from scoring_service.schemas import EntityFreshness

logger = logging.getLogger(__name__)


@dataclass
class Scored:
    """The outcome for one request."""

    score: float | None
    label: str
    reasons: list[str]
    freshness: dict[str, EntityFreshness]


class Scorer:
    """Scores mapped requests against one model and one online store."""

    def __init__(self, model: LoadedModel, reader: OnlineFeatureReader) -> None:
        self.model = model
        self.reader = reader

    def score_sync(self, mapped: MappedRequests) -> list[Scored]:
        """Blocking path: one feature read and one model call for all requests."""
        model = self.model
        version = model.version_label
        started = time.perf_counter()
        batch = self.reader.read(mapped.keys)
        fetched = time.perf_counter()
        metrics.STAGE_SECONDS.labels("features", version).observe(fetched - started)
        matrix = np.concatenate([batch.values, mapped.request_values], axis=1)
        scores = model.predictor.predict(np.ascontiguousarray(matrix, dtype=np.float32))
        predicted = time.perf_counter()
        metrics.STAGE_SECONDS.labels("predict", version).observe(predicted - fetched)
        out: list[Scored] = []
        for i, score in enumerate(scores):
            statuses = {k: int(s[i]) for k, s in batch.status.items()}
            label, reasons = model.policy.decide(float(score), matrix[i], statuses)
            freshness = {
                key: EntityFreshness(
                    status=STATUS_NAMES[statuses[key]],  # type: ignore[arg-type]
                    age_seconds=None
                    if np.isnan(batch.age_seconds[key][i])
                    else round(float(batch.age_seconds[key][i]), 3),
                )
                for key in statuses
            }
            metrics.LABELS.labels(label, version).inc()
            out.append(Scored(float(score), label, reasons, freshness))
        metrics.STAGE_SECONDS.labels("post_process", version).observe(
            time.perf_counter() - predicted
        )
        return out

    async def score(self, mapped: MappedRequests) -> list[Scored]:
        """Async path: the blocking work runs in a worker thread."""
        return await asyncio.to_thread(self.score_sync, mapped)
