"""Prometheus metrics: the names, types and labels dashboards and alerts read, latency buckets
with the default deadline on an edge, and per-worker gauges kept per live worker.

The values are read back from the process's registry after real observations, as a scrape
would read them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from scoring_service.core import metrics

# name (as scraped, without sample suffixes), type, label names: what infra/prometheus and
# infra/grafana read.
CATALOGUE = {
    "STAGE_SECONDS": ("scoring_stage_seconds", Histogram, ("stage", "model_version")),
    "REQUEST_SECONDS": ("scoring_request_seconds", Histogram, ("route", "domain")),
    "LABELS": ("scoring_labels", Counter, ("label", "model_version")),
    "ERRORS": ("scoring_errors", Counter, ("code", "stage")),
    "MODEL_INFO": (
        "scoring_model_info",
        Gauge,
        ("model_version", "device", "graph", "gpu_min_batch"),
    ),
    "PREDICT_ROWS": ("scoring_predict_rows", Counter, ("graph",)),
    "SCORE_PSI": ("scoring_score_psi", Gauge, ("model_version",)),
    "FEATURE_PSI": ("scoring_feature_psi", Gauge, ("model_version", "feature")),
    "FEATURE_MISSING_RATE": ("scoring_feature_missing_rate", Gauge, ("model_version", "feature")),
    "DRIFT_WINDOW_ROWS": ("scoring_drift_window_rows", Gauge, ("model_version",)),
    "FEATURE_AGE_SECONDS": ("scoring_feature_age_seconds", Gauge, ("view", "stat")),
    "FEATURE_UNAVAILABLE_RATIO": ("scoring_feature_unavailable_ratio", Gauge, ("view",)),
    "SHADOW_LABEL_AGREEMENT": (
        "scoring_shadow_label_agreement",
        Gauge,
        ("shadow", "model_version"),
    ),
    "PREDICTION_LOG_WRITTEN": ("scoring_prediction_log_written", Counter, ()),
    "PREDICTION_LOG_DROPPED": ("scoring_prediction_log_dropped", Counter, ()),
    "VARIANT_REQUESTS": ("scoring_variant_requests", Counter, ("variant", "model_version")),
    "VARIANT_SCORES": ("scoring_variant_score", Histogram, ("variant", "model_version")),
    "VARIANT_SECONDS": ("scoring_variant_predict_seconds", Histogram, ("variant",)),
    "SHADOW_SCORE_DIFF": ("scoring_shadow_score_abs_diff", Gauge, ("shadow", "model_version")),
    "SHADOW_DROPPED": ("scoring_shadow_dropped", Counter, ()),
    "DEPLOYMENT_INFO": ("scoring_deployment_info", Gauge, ("domain", "deployment")),
    "FAMILY_LOADS": ("scoring_family_loads", Counter, ("family", "outcome")),
    "FAMILY_EVICTIONS": ("scoring_family_evictions", Counter, ("family",)),
    "FAMILY_REQUESTS": ("scoring_family_requests", Counter, ("family", "result")),
    "FAMILY_RESIDENT_BYTES": ("scoring_family_resident_bytes", Gauge, ("family",)),
    "FAMILY_RESIDENT_MEMBERS": ("scoring_family_resident_members", Gauge, ("family",)),
    "FAMILY_LOAD_SECONDS": ("scoring_family_load_seconds", Histogram, ("family",)),
}
# Gauges whose value is each worker's own (its model, its drift window): one series per live
# worker. The others are the same in every worker.
PER_WORKER = {
    "MODEL_INFO",
    "SCORE_PSI",
    "FEATURE_PSI",
    "FEATURE_MISSING_RATE",
    "DRIFT_WINDOW_ROWS",
    "FEATURE_AGE_SECONDS",
    "FEATURE_UNAVAILABLE_RATIO",
    "SHADOW_LABEL_AGREEMENT",
    "FAMILY_RESIDENT_BYTES",  # each worker holds its own family members
    "FAMILY_RESIDENT_MEMBERS",
}


@pytest.mark.parametrize("attribute", sorted(CATALOGUE))
def test_names_types_and_labels(attribute: str) -> None:
    name, kind, labels = CATALOGUE[attribute]
    metric = getattr(metrics, attribute)
    assert isinstance(metric, kind)
    assert metric._name == name
    assert tuple(metric._labelnames) == labels


def test_every_metric_of_the_module_is_catalogued() -> None:
    exported = {
        name
        for name, value in vars(metrics).items()
        if isinstance(value, Counter | Gauge | Histogram)
    }
    assert exported == set(CATALOGUE)


def test_gauges_of_each_worker_are_kept_per_live_worker() -> None:
    modes = {
        name: getattr(metrics, name)._multiprocess_mode
        for name, (_, kind, _) in CATALOGUE.items()
        if kind is Gauge
    }
    assert {name for name, mode in modes.items() if mode == "liveall"} == PER_WORKER
    assert metrics.MODE == "liveall"


def test_latency_buckets_put_the_deadlines_on_an_edge() -> None:
    """50 ms, the default deadline, is a bucket edge (answered in time is a bucket count);
    the buckets run from 0.2 ms, a fast stage, to 2.5 s, past the batch deadline's default."""
    for histogram in (metrics.STAGE_SECONDS, metrics.REQUEST_SECONDS, metrics.VARIANT_SECONDS):
        bounds = list(histogram._upper_bounds)
        assert bounds == sorted(bounds) and bounds[-1] == math.inf
        assert {0.0002, 0.001, 0.05, 2.5} <= set(bounds)
        assert bounds[0] == 0.0002 and bounds[-2] == 2.5


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_observation_lands_in_its_bucket_and_the_totals() -> None:
    labels = {"stage": "features", "model_version": "metrics_test/v0"}
    bucket = "scoring_stage_seconds_bucket"
    before = {le: sample(bucket, le=le, **labels) for le in ("0.002", "0.005", "+Inf")}
    metrics.STAGE_SECONDS.labels("features", "metrics_test/v0").observe(0.003)
    assert sample(bucket, le="0.002", **labels) == before["0.002"]
    assert sample(bucket, le="0.005", **labels) == before["0.005"] + 1
    assert sample(bucket, le="+Inf", **labels) == before["+Inf"] + 1
    assert sample("scoring_stage_seconds_count", **labels) >= 1
    assert sample("scoring_stage_seconds_sum", **labels) >= 0.003


def test_counters_count_by_their_labels() -> None:
    refused = {"code": "metrics_test_code", "stage": "request"}
    before = sample("scoring_errors_total", **refused)
    metrics.ERRORS.labels("metrics_test_code", "request").inc()
    metrics.ERRORS.labels("metrics_test_code", "request").inc(2)
    metrics.ERRORS.labels("metrics_test_code", "auth").inc()
    assert sample("scoring_errors_total", **refused) == before + 3
    labelled = {"label": "suspicious", "model_version": "metrics_test/v0"}
    metrics.LABELS.labels("suspicious", "metrics_test/v0").inc(5)
    assert sample("scoring_labels_total", **labelled) >= 5


@pytest.mark.parametrize("times", [1, 10])  # a micro-batch's few values; past 64, numpy's way
def test_many_observations_at_once_count_as_one_at_a_time(times: int) -> None:
    """``observe_many`` leaves every bucket, the count and the sum as ``observe`` per value:
    values on a bound, between bounds, past the last finite bound, below the first, and NaN
    (skipped)."""
    values = [0.0, 0.001, 0.0049, 0.005, 0.3, 0.3, 0.99, 1.0, 1.5, -0.2, float("nan")] * times
    one = {"variant": "metrics_test", "model_version": f"metrics_test/one-{times}"}
    many = {"variant": "metrics_test", "model_version": f"metrics_test/many-{times}"}
    for value in values:
        if not math.isnan(value):
            metrics.VARIANT_SCORES.labels(*one.values()).observe(value)
    metrics.observe_many(metrics.VARIANT_SCORES.labels(*many.values()), np.asarray(values))
    metrics.observe_many(metrics.VARIANT_SCORES.labels(*many.values()), [])
    bucket = "scoring_variant_score_bucket"
    assert sample("scoring_variant_score_count", **many) == 10 * times
    assert sample(bucket, le="0.005", **many) == 5 * times  # -0.2, 0.0, 0.001, 0.0049, 0.005
    assert sample(bucket, le="0.99", **many) == 8 * times
    assert sample("scoring_variant_score_sum", **many) == pytest.approx(
        sample("scoring_variant_score_sum", **one)
    )
    for bound in metrics.VARIANT_SCORES._upper_bounds:
        le = "+Inf" if bound == math.inf else repr(float(bound))
        assert sample(bucket, le=le, **many) == sample(bucket, le=le, **one), le
