"""Prometheus metrics: per-stage latency by model version, labels, errors by code."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Final

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

# With several worker processes (SCORING_WORKERS, scoring_service/core/process.py) every gauge keeps
# one series per live worker (label pid): each worker has its own model, window and answers.
# Counters and histograms are summed over workers.
MODE: Final = "liveall"

# observe_many: from this many values on, bucketed with numpy rather than one by one.
OBSERVE_VECTOR_MIN = 64

_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

STAGE_SECONDS = Histogram(
    "scoring_stage_seconds",
    "Time spent per request-path stage.",
    ["stage", "model_version"],
    buckets=_BUCKETS,
)
REQUEST_SECONDS = Histogram(
    "scoring_request_seconds",
    "End-to-end time of scoring routes, by route and business domain.",
    ["route", "domain"],
    buckets=_BUCKETS,
)
LABELS = Counter("scoring_labels_total", "Answers by business label.", ["label", "model_version"])
ERRORS = Counter("scoring_errors_total", "Refusals by error code and stage.", ["code", "stage"])
MODEL_INFO = Gauge(
    "scoring_model_info",
    "The model now serving (1; 0 for ones it replaced): version, device (cpu, cuda), graphs "
    "(cpu, or gpu+cpu) and the smallest batch sent to the GPU graph (0 without one).",
    ["model_version", "device", "graph", "gpu_min_batch"],
    multiprocess_mode=MODE,
)
PREDICT_ROWS = Counter(
    "scoring_predict_rows_total",
    "Rows predicted, by graph: cpu (TreeEnsemble, CPU) or gpu (standard operators, CUDA).",
    ["graph"],
)

# Drift and freshness over a sliding window of scored rows (scoring_service/monitoring/drift.py);
# refreshed
# every few seconds, not per request. PSI: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant.
SCORE_PSI = Gauge(
    "scoring_score_psi",
    "PSI of the scores in the drift window against the package's baseline score distribution.",
    ["model_version"],
    multiprocess_mode=MODE,
)
FEATURE_PSI = Gauge(
    "scoring_feature_psi",
    "PSI of a model input in the drift window against its training baseline (non-missing values).",
    ["model_version", "feature"],
    multiprocess_mode=MODE,
)
FEATURE_MISSING_RATE = Gauge(
    "scoring_feature_missing_rate",
    "Share of rows in the drift window where a model input is missing (NaN).",
    ["model_version", "feature"],
    multiprocess_mode=MODE,
)
DRIFT_WINDOW_ROWS = Gauge(
    "scoring_drift_window_rows",
    "Rows in the drift window the PSI gauges were computed on.",
    ["model_version"],
    multiprocess_mode=MODE,
)
FEATURE_AGE_SECONDS = Gauge(
    "scoring_feature_age_seconds",
    "Age of the feature rows read in the drift window, by feature view: min (the freshest row; "
    "grows when the view stops being refreshed), p50 and max.",
    ["view", "stat"],
    multiprocess_mode=MODE,
)
FEATURE_UNAVAILABLE_RATIO = Gauge(
    "scoring_feature_unavailable_ratio",
    "Share of the drift window's reads of a view that found no row, or one older than its TTL "
    "(1 for a view that was never materialized).",
    ["view"],
    multiprocess_mode=MODE,
)
SHADOW_LABEL_AGREEMENT = Gauge(
    "scoring_shadow_label_agreement",
    "Share of recent requests where a shadow model's label equals the answering model's.",
    ["shadow", "model_version"],
    multiprocess_mode=MODE,
)
PREDICTION_LOG_WRITTEN = Counter(
    "scoring_prediction_log_written_total",
    "Answers appended to the prediction log's journal.",
)
PREDICTION_LOG_DROPPED = Counter(
    "scoring_prediction_log_dropped_total",
    "Answers not logged: the log's queue was full (overload) or the disk refused them.",
)
VARIANT_REQUESTS = Counter(
    "scoring_variant_requests_total",
    "Rows answered (or, for shadows, scored) by each variant of the live deployment.",
    ["variant", "model_version"],
)
VARIANT_SCORES = Histogram(
    "scoring_variant_score",
    "Scores given by each variant, every row it answers (a shadow: every row it scores).",
    ["variant", "model_version"],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
)
VARIANT_SECONDS = Histogram(
    "scoring_variant_predict_seconds",
    "Model time of each variant per call (input assembly and prediction).",
    ["variant"],
    buckets=_BUCKETS,
)
SHADOW_SCORE_DIFF = Gauge(
    "scoring_shadow_score_abs_diff",
    "Mean absolute difference between a shadow's scores and the answers' over recent requests.",
    ["shadow", "model_version"],
)
SHADOW_DROPPED = Counter(
    "scoring_shadow_dropped_total",
    "Rows not scored by shadows: queue full or time budget spent (shadows yield first under load).",
)
DEPLOYMENT_INFO = Gauge(
    "scoring_deployment_info",
    "The live deployment (1; 0 for those it replaced).",
    ["domain", "deployment"],
)
# Model families (scoring_service/deployments/family.py): members loaded on demand within a budget.
FAMILY_LOADS = Counter(
    "scoring_family_loads_total",
    "Family member loads by outcome (loaded, refused, over_budget).",
    ["family", "outcome"],
)
FAMILY_EVICTIONS = Counter(
    "scoring_family_evictions_total",
    "Family members evicted (least recently used) to fit the memory budget.",
    ["family"],
)
FAMILY_REQUESTS = Counter(
    "scoring_family_requests_total",
    "Rows of a family by how they were answered: hit (the member, resident), loading (the "
    "default, the member loading), infrequent (the default, the member not loaded: its segment "
    "asked for less often than the member it would evict), refused (the default, the member "
    "refused), default (no member).",
    ["family", "result"],
)
FAMILY_RESIDENT_BYTES = Gauge(
    "scoring_family_resident_bytes",
    "Bytes of the family members' graphs held in sessions (the default's not counted).",
    ["family"],
    multiprocess_mode=MODE,
)
FAMILY_RESIDENT_MEMBERS = Gauge(
    "scoring_family_resident_members",
    "Family members held in memory (the default not counted).",
    ["family"],
    multiprocess_mode=MODE,
)
FAMILY_LOAD_SECONDS = Histogram(
    "scoring_family_load_seconds",
    "Time to load a family member (seal, checks, session, warm-up), off the request path.",
    ["family"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def observe_many(histogram: Histogram, values: Sequence[float] | np.ndarray) -> None:
    """Observe many values in a histogram (one labelled child), NaN skipped, with one write per
    bucket they fall in and one for their sum, where observing them one by one writes twice per
    value (each write locks a shared-memory file under several worker processes).

    The counts and sum are exactly those of ``observe`` called per value. It reads the child's
    buckets and bounds (``prometheus_client``'s own attributes, stable since its 0.4 series);
    a client without them gets ``observe`` per value.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in np.asarray(values, dtype=np.float64).tolist():
            if value == value:  # not NaN
                histogram.observe(value)
        return
    # observe() counts a value in the first bucket whose bound is >= it (the last bound is +Inf).
    if len(values) > OBSERVE_VECTOR_MIN:
        array = np.asarray(values, dtype=np.float64)
        array = array[~np.isnan(array)]
        counts = np.bincount(np.searchsorted(np.asarray(bounds), array, side="left"))
        found = {i: int(counts[i]) for i in np.flatnonzero(counts).tolist()}
        summed = float(array.sum())
    else:  # a micro-batch: numpy's per-call costs would outweigh the values
        listed = values.tolist() if isinstance(values, np.ndarray) else list(values)
        kept = [float(v) for v in listed if v == v]
        found = {}
        for value in kept:
            index = bisect_left(bounds, value)
            found[index] = found.get(index, 0) + 1
        summed = sum(kept)
    if not found:
        return
    total.inc(summed)
    for index, count in found.items():
        buckets[index].inc(count)
