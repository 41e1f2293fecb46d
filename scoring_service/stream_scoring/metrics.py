"""Prometheus metrics of stream scoring: throughput, lag, pending work, event-to-decision time."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS = Counter(
    "stream_scoring_events_total",
    "Stream entries handled, by outcome: decided (a decision written), duplicate (decided "
    "before: a redelivery or a repeated business id), dead_letter (refused entry).",
    ["stream", "outcome"],
)
EVENT_TO_DECISION = Histogram(
    "stream_scoring_event_to_decision_seconds",
    "From the entry's append to the input stream (its id's time) to its decision's write.",
    ["stream"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SECONDS = Histogram(
    "stream_scoring_batch_seconds",
    "Time to score, write and acknowledge one batch of entries.",
    ["stream"],
    buckets=_LATENCY_BUCKETS,
)
LAG = Gauge(
    "stream_scoring_lag_entries",
    "Entries of the input stream not yet delivered to the group (XINFO GROUPS lag).",
    ["stream", "group"],
)
GROUP_PENDING = Gauge(
    "stream_scoring_group_pending_entries",
    "Entries delivered to the group's members and not yet acknowledged (all members).",
    ["stream", "group"],
)
IN_FLIGHT = Gauge(
    "stream_scoring_in_flight_entries",
    "Entries this member has read and not yet acknowledged (bounded by --max-in-flight).",
    ["stream"],
)
READ_PAUSES = Counter(
    "stream_scoring_read_pauses_total",
    "Times reading paused because one more batch would exceed --max-in-flight entries in hand.",
    ["stream"],
)
CLAIMED = Counter(
    "stream_scoring_claimed_total",
    "Entries taken over (XAUTOCLAIM) from a member idle longer than --claim-idle-seconds.",
    ["stream"],
)
