"""Drift and freshness in the service: a sliding window of scored rows, summarised now and then.

``DriftMonitor.observe`` is called once per scored batch (``Scorer.predict_and_label``) and only
copies the batch's input matrix, scores, per-view row ages and entity statuses into fixed-size
ring buffers: a few slice writes, O(batch), no allocation that grows. Every ``every_s`` seconds
or ``every_rows`` rows, a background thread summarises the window into Prometheus gauges
(``scoring_service.core.metrics``):

- ``scoring_score_psi{model_version}``: PSI of the window's scores against the package's
  holdout score baseline (``baseline_score_bins``; quantiles in older packages);
- ``scoring_feature_psi{model_version,feature}`` and ``scoring_feature_missing_rate``: each
  input against its training baseline (``Manifest.feature_baselines``: decile bins, missing
  rate). PSI is over the non-missing values; a feature going missing shows in the missing rate;
- ``scoring_feature_age_seconds{view,stat}``: min / p50 / max age of the rows read per feature
  view. An entity's row is as old as its last activity, so p50 and max are long for quiet
  entities; the *min* (the freshest row of the window) is what grows when a view stops being
  refreshed;
- ``scoring_feature_unavailable_ratio{view}``: share of reads of a view that found no row or a
  row older than the TTL (1 when the view was never materialized). Only views that are evidence
  of their entity are reported: an optional view (streaming windows) is legitimately empty for
  quiet entities, and its freshness shows in the age gauges.

The same binning and PSI as the offline monitor (``models.package``). Imports numpy and
prometheus only (through ``scoring_service.core.metrics``), never a training library.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from feature_repo.online import NOT_REQUESTED, FeatureBatch
from models.package import FeatureBaseline, Manifest, bin_counts, psi, score_reference
from scoring_service.core import metrics

if TYPE_CHECKING:
    from scoring_service.deployments.packages import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_ROWS = 4096
DEFAULT_EVERY_S = 10.0


@dataclass(frozen=True)
class ViewWatch:
    """A feature view whose row ages are watched."""

    name: str
    join_key: str
    ttl_seconds: int | None
    evidence: bool = True


@dataclass
class DriftSnapshot:
    """One summary of the window (also what the gauges show)."""

    rows: int
    score_psi: float
    feature_psi: dict[str, float] = field(default_factory=dict)
    missing_rate: dict[str, float] = field(default_factory=dict)
    age_seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # view -> stat -> s
    unavailable_ratio: dict[str, float] = field(default_factory=dict)


class DriftMonitor:
    """Sliding-window drift and freshness of one model's served traffic."""

    def __init__(
        self,
        version_label: str,
        features: list[str],
        baselines: dict[str, FeatureBaseline],
        score_reference: FeatureBaseline | None,
        views: list[ViewWatch],
        *,
        window_rows: int = DEFAULT_WINDOW_ROWS,
        every_s: float = DEFAULT_EVERY_S,
        every_rows: int | None = None,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_rows < 1:
            raise ValueError("window_rows must be at least 1")
        self.version_label = version_label
        self.features = list(features)
        self.window_rows = window_rows
        self.every_s = every_s
        self.every_rows = every_rows or window_rows
        self.background = background
        self._clock = clock
        self._lock = threading.Lock()
        self._values = np.full((window_rows, len(features)), np.nan, dtype=np.float32)
        self._scores = np.full(window_rows, np.nan, dtype=np.float64)
        # View-major, so one view's ring is contiguous and a batch is one slice write.
        self._ages = np.full((len(views), window_rows), np.nan, dtype=np.float64)
        self._status = np.full((len(views), window_rows), NOT_REQUESTED, dtype=np.int8)
        self._next = 0  # ring position of the next row
        self._filled = 0  # rows in the window (<= window_rows)
        self._since = 0  # rows observed since the last summary
        self._last = clock()
        self._refreshing = False
        self._failed = False
        self.views = views
        # Baselines resolved to column positions once, and gauge children looked up once.
        self._baselines = [
            (j, name, np.asarray(b.edges), np.asarray(b.proportions))
            for j, name in enumerate(self.features)
            if (b := baselines.get(name)) is not None
        ]
        self._score_ref = score_reference
        self._score_gauge = metrics.SCORE_PSI.labels(version_label)
        self._rows_gauge = metrics.DRIFT_WINDOW_ROWS.labels(version_label)
        self._psi_gauges = {
            name: metrics.FEATURE_PSI.labels(version_label, name)
            for _, name, _, _ in self._baselines
        }
        self._missing_gauges = {
            name: metrics.FEATURE_MISSING_RATE.labels(version_label, name) for name in self.features
        }
        self._age_gauges = {
            view.name: {
                stat: metrics.FEATURE_AGE_SECONDS.labels(view.name, stat)
                for stat in ("min", "p50", "max")
            }
            for view in views
        }
        self._unavailable_gauges = {
            view.name: metrics.FEATURE_UNAVAILABLE_RATIO.labels(view.name)
            for view in views
            if view.evidence
        }

    @classmethod
    def for_model(cls, model: LoadedModel, **options: object) -> DriftMonitor:
        """A monitor of a loaded package: its inputs, baselines and feature views."""
        return cls.for_manifest(
            model.manifest,
            [ViewWatch(v.name, v.join_key, v.ttl_seconds, v.evidence) for v in model.layout.views],
            **options,
        )

    @classmethod
    def for_manifest(
        cls, manifest: Manifest, views: list[ViewWatch], **options: object
    ) -> DriftMonitor:
        """A monitor from a manifest and the views the reader serves."""
        return cls(
            f"{manifest.name}/{manifest.version}",
            manifest.features,
            manifest.feature_baselines,
            score_reference(manifest),
            views,
            **options,  # type: ignore[arg-type]
        )

    def observe(self, matrix: np.ndarray, scores: np.ndarray, batch: FeatureBatch | None) -> None:
        """Add a scored batch to the window; summarise when due. Never raises into scoring."""
        try:
            due = self._add(matrix, scores, batch)
        except Exception:  # monitoring must not fail an answer; say so once
            if not self._failed:
                logger.exception("drift monitor of %s cannot record a batch", self.version_label)
                self._failed = True
            return
        if due:
            if self.background:
                threading.Thread(target=self._refresh_once, name="drift", daemon=True).start()
            else:
                self._refresh_once()

    def _add(self, matrix: np.ndarray, scores: np.ndarray, batch: FeatureBatch | None) -> bool:
        n = len(scores)
        if n == 0:
            return False
        if matrix.shape[1] != len(self.features):
            raise ValueError(
                f"{matrix.shape[1]} inputs given, but the package has {len(self.features)}"
            )
        skip = max(0, n - self.window_rows)  # a batch larger than the window keeps its tail
        rows = n - skip
        # No batch: nothing was read from the store (a model of request features only).
        ages = [batch.view_age_seconds.get(v.name) if batch else None for v in self.views]
        statuses = [batch.status.get(v.join_key) if batch else None for v in self.views]
        with self._lock:
            # At most two slice writes per array: up to the end of the ring, then from its start.
            first = min(rows, self.window_rows - self._next)
            for dst, src, count in ((self._next, skip, first), (0, skip + first, rows - first)):
                if count <= 0:
                    continue
                to, part = slice(dst, dst + count), slice(src, src + count)
                self._values[to] = matrix[part]
                self._scores[to] = scores[part]
                for v, (age, status) in enumerate(zip(ages, statuses, strict=True)):
                    self._ages[v, to] = np.nan if age is None else age[part]
                    self._status[v, to] = NOT_REQUESTED if status is None else status[part]
            self._next = (self._next + rows) % self.window_rows
            self._filled = min(self.window_rows, self._filled + rows)
            self._since += n
            now = self._clock()
            due = not self._refreshing and (
                self._since >= self.every_rows or now - self._last >= self.every_s
            )
            if due:
                self._refreshing = True
                self._since = 0
                self._last = now
            return due

    def _refresh_once(self) -> None:
        try:
            self.refresh()
        except Exception:
            logger.exception("drift summary of %s failed", self.version_label)
        finally:
            with self._lock:
                self._refreshing = False

    def refresh(self) -> DriftSnapshot:
        """Summarise the window now and set the gauges (tests call this directly)."""
        with self._lock:  # a copy, so scoring never waits for the arithmetic below
            filled = self._filled
            values = self._values[:filled].copy()
            scores = self._scores[:filled].copy()
            ages = self._ages[:, :filled].copy()
            requested = self._status[:, :filled] != NOT_REQUESTED
        snap = DriftSnapshot(rows=filled, score_psi=float("nan"))
        if self._score_ref is not None:
            snap.score_psi = psi(
                self._score_ref.proportions, bin_counts(scores, self._score_ref.edges)
            )
        missing = np.isnan(values).mean(axis=0) if filled else np.full(len(self.features), np.nan)
        snap.missing_rate = {name: float(missing[j]) for j, name in enumerate(self.features)}
        for j, name, edges, expected in self._baselines:
            snap.feature_psi[name] = psi(expected, bin_counts(values[:, j], edges))
        for v, view in enumerate(self.views):
            age = ages[v]
            found = age[~np.isnan(age)]
            if found.size:
                snap.age_seconds[view.name] = {
                    "min": float(found.min()),
                    "p50": float(np.median(found)),
                    "max": float(found.max()),
                }
            else:
                snap.age_seconds[view.name] = dict.fromkeys(("min", "p50", "max"), float("nan"))
            asked = requested[v]
            if view.evidence and asked.any():
                with np.errstate(invalid="ignore"):
                    stale = age > view.ttl_seconds if view.ttl_seconds is not None else False
                unavailable = asked & (np.isnan(age) | stale)
                snap.unavailable_ratio[view.name] = float(unavailable.sum() / asked.sum())
        self._publish(snap)
        return snap

    def _publish(self, snap: DriftSnapshot) -> None:
        self._rows_gauge.set(snap.rows)
        self._score_gauge.set(snap.score_psi)
        for name, value in snap.feature_psi.items():
            self._psi_gauges[name].set(value)
        for name, value in snap.missing_rate.items():
            self._missing_gauges[name].set(value)
        for view, stats in snap.age_seconds.items():
            for stat, value in stats.items():
                self._age_gauges[view][stat].set(value)
        for view, value in snap.unavailable_ratio.items():
            self._unavailable_gauges[view].set(value)
