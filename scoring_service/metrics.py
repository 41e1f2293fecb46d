"""Prometheus metrics: per-stage latency by model version, labels, errors by code."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

STAGE_SECONDS = Histogram(
    "scoring_stage_seconds",
    "Time spent per request-path stage.",
    ["stage", "model_version"],
    buckets=_BUCKETS,
)
REQUEST_SECONDS = Histogram(
    "scoring_request_seconds",
    "End-to-end time of scoring routes.",
    ["route"],
    buckets=_BUCKETS,
)
LABELS = Counter("scoring_labels_total", "Answers by business label.", ["label", "model_version"])
ERRORS = Counter("scoring_errors_total", "Refusals by error code and stage.", ["code", "stage"])
MODEL_INFO = Gauge(
    "scoring_model_info",
    "The model now serving (1; 0 for ones it replaced): version, device (cpu, cuda), graphs "
    "(cpu, or gpu+cpu) and the smallest batch sent to the GPU graph (0 without one).",
    ["model_version", "device", "graph", "gpu_min_batch"],
)
PREDICT_ROWS = Counter(
    "scoring_predict_rows_total",
    "Rows predicted, by graph: cpu (TreeEnsemble, CPU) or gpu (standard operators, CUDA).",
    ["graph"],
)
