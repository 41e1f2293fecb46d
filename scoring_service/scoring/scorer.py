"""The request path: map -> read features -> predict -> label, for one or many requests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np

from feature_repo.transforms import model_input
from scoring_service.core import metrics
from scoring_service.core.errors import FeatureStoreUnavailable, NotReady
from scoring_service.deployments.live import (
    Answered,
    LiveDeployment,
    ModelView,
    ShadowRunner,
    unread_batch,
)
from scoring_service.deployments.packages import LoadedModel
from scoring_service.monitoring.drift import DriftMonitor
from scoring_service.scoring.micro_batching import BatcherClosed, MicroBatcher
from scoring_service.stages.features import FeatureBatch, OnlineFeatureReader
from scoring_service.stages.mapping import MappedRequests
from scoring_service.stages.outcomes import OFF_LOOP_ROWS, Scored, ScoredColumns

logger = logging.getLogger(__name__)

V = TypeVar("V")


class Scorer:
    """Scores mapped requests against a deployment's models and one online store.

    A deployment of one package (the default) takes the direct path below; with challengers,
    shadows, fallbacks or ensembles, ``scoring_service.deployments.live`` decides each row over
    the same
    single feature read.

    ``score`` is the service's path: small calls join a micro-batch (one feature read and one
    model call for every request that arrives while the previous batch is being scored, see
    ``scoring_service/scoring/micro_batching.py``); larger calls go straight through. Readers with a
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
        deployment: LiveDeployment | None = None,
        shadow_time_share: float = 0.2,
    ) -> None:
        self.model = model
        self.reader = reader
        self.deployment = deployment
        # The direct path unless the deployment has more than one answering model or any
        # fallback; shadows are offered the direct path's answers.
        self.routed = deployment is not None and not _direct(deployment)
        # On the direct path of a deployment, the champion's columns of the union read.
        self._champion: ModelView | None = (
            deployment.champion.members[0] if deployment is not None and not self.routed else None
        )
        self.shadows = (
            ShadowRunner(deployment, time_share=shadow_time_share)
            if deployment is not None
            else None
        )
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
            for label in [*model.policy.labels, model.policy.uncertain_label]
        }
        self._keys = [view.join_key for view in model.layout.views]
        self.drift = DriftMonitor.for_model(model)  # sliding-window drift and freshness gauges
        self._retired = False
        self.batcher: MicroBatcher[MappedRequests, list[Scored]] | None = (
            MicroBatcher(self._score_batch, max_size=batch_max_rows, max_wait_s=batch_max_wait_s)
            if micro_batching
            else None
        )

    @property
    def mapping(self) -> Any:
        """What ``map_records`` maps requests by: the deployment's union, or the manifest."""
        return self.deployment.plan if self.deployment is not None else self.model.manifest

    @property
    def version_label(self) -> str:
        """The deployment's name when routed, else the model's ``name/version``."""
        return self.deployment.spec.name if self.routed else self.model.version_label  # type: ignore[union-attr]

    def model_input(self, batch: FeatureBatch, mapped: MappedRequests) -> np.ndarray:
        """The model's input matrix: stored, then on-demand features, then request values."""
        if self._champion is not None:  # a deployment's read: the champion's columns of it
            return self._champion.matrix(batch, mapped, np.arange(len(mapped.request_values)))
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

    def label_columns(self, batch: FeatureBatch | None, mapped: MappedRequests) -> ScoredColumns:
        """One model call for the requests whose features were read, then their labels, as
        arrays (``LabelPolicy.decide_many``): no object per row. ``batch`` is None only on a
        routed deployment whose store could not be read."""
        if self.routed:
            return self._routed_columns(batch, mapped)
        assert batch is not None
        started = time.perf_counter()
        matrix = self.model_input(batch, mapped)
        scores = self.model.predictor.predict(np.ascontiguousarray(matrix, dtype=np.float32))
        predicted = time.perf_counter()
        self._seconds["predict"].observe(predicted - started)
        self.drift.observe(matrix, scores, batch)  # copies into a ring buffer; summarised later
        status = {key: batch.status[key] for key in self._keys}
        labels, reasons = self.model.policy.decide_many(scores, matrix, status)
        for label, n in Counter(labels).items():
            self._labels[label].inc(n)
        if self.shadows is not None:  # scored after the answer, off its path
            self.shadows.offer(batch, mapped, Answered(np.asarray(scores), labels, reasons, [], []))
        self._seconds["post_process"].observe(time.perf_counter() - predicted)
        return ScoredColumns(
            scores=scores.tolist(),
            labels=labels,
            reasons=reasons,
            status={key: values.tolist() for key, values in status.items()},
            age_seconds={key: batch.age_seconds[key].tolist() for key in self._keys},
            default_version=self.model.version_label,
            inputs=matrix,
        )

    def _routed_columns(self, batch: FeatureBatch | None, mapped: MappedRequests) -> ScoredColumns:
        """Every row decided by its variant or the fallback chain
        (scoring_service.deployments.live)."""
        assert self.deployment is not None and self.shadows is not None
        n = len(mapped.request_values)
        started = time.perf_counter()
        answered = self.deployment.answer(batch, mapped, n)
        if answered is None:  # the store is down and no fallback answers without it
            raise FeatureStoreUnavailable(
                "The online feature store cannot be read right now; retry shortly."
            )
        self._seconds["predict"].observe(time.perf_counter() - started)
        self.shadows.offer(batch, mapped, answered)
        for label, count in Counter(answered.labels).items():
            child = self._labels.get(label)
            if child is not None:
                child.inc(count)
        shown = batch if batch is not None else unread_batch(self.deployment.layout, n)
        keys = list(shown.status)
        return ScoredColumns(
            scores=[None if s != s else s for s in answered.scores.tolist()],  # type: ignore[misc]
            labels=answered.labels,
            reasons=answered.reasons,
            status={key: shown.status[key].tolist() for key in keys},
            age_seconds={key: shown.age_seconds[key].tolist() for key in keys},
            variants=answered.variants,
            model_versions=answered.model_versions,
            inputs=answered.inputs,
            input_names=list(answered.input_names),
        )

    async def _read(self, mapped: MappedRequests, large: bool) -> FeatureBatch | None:
        """The feature read; None when a routed deployment's store is down (its fallbacks may
        still answer)."""
        try:
            if self._read_async is None:
                return await asyncio.to_thread(self.reader.read, mapped.keys)
            return await self._read_async(mapped.keys, decode_off_loop=large)
        except FeatureStoreUnavailable:
            if self.routed and self.deployment is not None and self.deployment.fallback:
                return None
            raise

    @property
    def answers_unread(self) -> bool:
        """Whether the deployment has a fallback step that answers without the store."""
        return (
            self.routed
            and self.deployment is not None
            and any(not step.reads_store for step in self.deployment.fallback)
        )

    def score_unread(self, mapped: MappedRequests) -> list[Scored]:
        """Answers without a feature read, by the fallback steps that need none (the store is
        down, or its read missed the deadline); FeatureStoreUnavailable where none answers."""
        return self.predict_and_label(None, mapped)

    def predict_and_label(self, batch: FeatureBatch | None, mapped: MappedRequests) -> list[Scored]:
        """``label_columns``, one ``Scored`` per request."""
        return self.label_columns(batch, mapped).rows()

    async def score_columns(self, mapped: MappedRequests) -> ScoredColumns:
        """One feature read and one model call for a large call (score-batch), as columns;
        decoding, the model call and labelling run off the event loop when it is large."""
        started = time.perf_counter()
        large = self._read_async is None or len(mapped.request_values) > OFF_LOOP_ROWS
        batch = await self._read(mapped, large)
        self._seconds["features"].observe(time.perf_counter() - started)
        if large:
            return await asyncio.to_thread(self.label_columns, batch, mapped)
        return self.label_columns(batch, mapped)

    async def score_now(self, mapped: MappedRequests) -> list[Scored]:
        """One feature read and one model call for these requests, without batching."""
        started = time.perf_counter()
        if self._read_async is None and not self.routed:
            return await asyncio.to_thread(self.score_sync, mapped)
        large = len(mapped.request_values) > OFF_LOOP_ROWS
        batch = await self._read(mapped, large)
        self._seconds["features"].observe(time.perf_counter() - started)
        if large or self._read_async is None:
            # A large call would hold the event loop for its whole model call and labelling.
            return await asyncio.to_thread(self.predict_and_label, batch, mapped)  # type: ignore[arg-type]
        return self.predict_and_label(batch, mapped)  # type: ignore[arg-type]

    async def score(self, mapped: MappedRequests) -> list[Scored]:
        """Score n requests: small calls join the next micro-batch, large ones go alone."""
        n = len(mapped.request_values)
        if self.batcher is None or n >= self.batcher.max_size:
            return await self.score_now(mapped)
        try:
            return await self.batcher.submit(mapped, n)
        except BatcherClosed as exc:
            if self._retired:  # swapped out while this call was on its way: answer it alone
                return await self.score_now(mapped)
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

    def start(self) -> None:
        """Start the background work (shadow scoring) on the running event loop."""
        if self.shadows is not None:
            self.shadows.start()

    async def retire(self) -> None:
        """Replaced by another scorer (a deployment swap): finish the batches in progress, and
        answer a call that took this scorer before the swap but reaches it after, without
        batching, instead of refusing it as a stopping service would."""
        self._retired = True
        await self.aclose()

    async def aclose(self) -> None:
        """Finish the batches in progress; take no more."""
        if self.batcher is not None:
            await self.batcher.close()
        if self.shadows is not None:
            await self.shadows.aclose()


def _direct(deployment: LiveDeployment) -> bool:
    """A deployment whose answers one package gives alone: one variant of one package, no
    required views, no fallback (shadows may watch it)."""
    (variant,) = deployment.variants[:1]
    return (
        len(deployment.variants) == 1
        and variant.family is None
        and len(variant.members) == 1
        and not variant.required_views
        and not deployment.fallback
    )


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
