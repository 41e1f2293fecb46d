"""Stream scoring rows of ``make bench`` (``bench/run.py``; ``--only stream`` runs them alone).

One ``python -m scoring_service stream-score`` process (one member, no window step: the bench
world's model reads no streaming views) against the bench Redis, the same world and request
bodies as the HTTP rows:

- saturation: ``events`` entries appended at once, then scored; events/s from the first entry's
  append to the last decision's write (both stamped by Redis in the stream ids);
- latency: entries appended at half that rate for ``duration`` seconds on an open-loop
  schedule (entry k is due at k / rate; every ``STEP_S`` the producer appends what is due, in
  one pipeline, whatever the scorer does); each event's time from its append to its decision's
  write (stream ids, both stamped by Redis, ms resolution), p50, p99 and max. The entries are
  built before the clock starts, so the producer's share of the two cores stays small (its CPU
  time is in the row, ``producer_cpu_percent``), and the row says how far behind its schedule
  it fell (``send_lag_p99_ms``, ``send_lag_max_ms``: a large value says the machine could not
  keep the schedule, and the offered rate is below the target).

The targets: stream events/s per process against the HTTP path's throughput at 16
connections measured in the same run (``stream_vs_http_c16`` >= 2), and p99 at half the
saturated rate <= 50 ms.

And the online learner (``scoring_service/deployments/online.py``) in this process: labels
learned per second (matured labels, vectors from a prediction log on disk, one lookup per call
of ``learn_matured``) and rows predicted per second, over the bench model's feature list with
standard-normal values (the rates depend on the width, not the values); the rows' latency
columns hold the mean time per label or row.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

STREAM = "bench:payments"
DECISIONS = "bench:decisions"
STEP_S = 0.002  # the producer's tick: ~14 entries per append at 7,000/s, near a steady flow
TARGETS = {
    "stream_vs_http_c16": (">=", 2.0),
    "stream_half_rate_p99_ms": ("<=", 50.0),
}


def learner_rows(
    feature_names: list[str], matrix: Any, workdir: Path, labels: int = 5_000
) -> tuple[list[dict], dict[str, float]]:
    """Learn and predict rates of the online learner on ``matrix`` (rows of the package's
    features); labels are planted as matured, their answers written to a prediction log."""
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import pyarrow as pa

    from feature_repo import prediction_log as plog
    from scoring_service.deployments.online import LabelEvent, OnlineLearner, log_answers

    rng = np.random.default_rng(5)
    rows = np.asarray(matrix, dtype=np.float32)[rng.integers(0, len(matrix), labels)]
    ids = [f"bench_{i}" for i in range(labels)]
    at = datetime(2026, 1, 1, tzinfo=UTC)
    n = labels
    table = pa.Table.from_pydict(
        {
            plog.REQUEST_ID: ids,
            plog.BUSINESS_ID: ids,
            plog.TS: [at] * n,
            plog.DOMAIN: ["fraud"] * n,
            plog.DEPLOYMENT: ["bench"] * n,
            plog.VARIANT: ["champion"] * n,
            plog.MODEL_VERSION: ["fraud_model/v1"] * n,
            plog.FEATURES: [list(map(float, r)) for r in rows],
            plog.FEATURE_NAMES: [feature_names] * n,
            plog.STATUSES: [[]] * n,
            plog.AGE_SECONDS: [[]] * n,
            plog.SCORE: [0.0] * n,
            plog.LABEL: ["not_fraud"] * n,
            plog.REASONS: [[]] * n,
            plog.LATENCY_MS: [0.0] * n,
        },
        schema=plog.schema([]),
    )
    log = workdir / "learner_log"
    plog.write(log, table, "bench")
    learner = OnlineLearner(feature_names, base_package="fraud_model/v1")
    learner.offer(LabelEvent(i, int(rng.random() < 0.05), at + timedelta(hours=1)) for i in ids)
    started = time.perf_counter()
    learned = learner.learn_matured(log_answers(log), now=at + timedelta(days=1))
    learn_s = time.perf_counter() - started
    started = time.perf_counter()
    learner.predict(rows)
    predict_s = time.perf_counter() - started
    out = [
        {
            "name": "online learner, learn (matured labels)",
            "concurrency": 1,
            "rps": round(learned / learn_s, 1),
            "p50_ms": round(1000 * learn_s / learned, 4),  # mean per label
            "p99_ms": round(1000 * learn_s / learned, 4),
            "events": learned,
        },
        {
            "name": "online learner, predict (rows)",
            "concurrency": 1,
            "rps": round(len(rows) / predict_s, 1),
            "p50_ms": round(1000 * predict_s / len(rows), 4),  # mean per row
            "p99_ms": round(1000 * predict_s / len(rows), 4),
            "events": len(rows),
        },
    ]
    return out, {
        "learner_learn_per_s": learned / learn_s,
        "learner_predict_per_s": len(rows) / predict_s,
    }


def _fields(body: dict[str, Any], i: int, run: str) -> dict[str, str]:
    """A request body as a stream entry: string fields, a transaction id of its own."""
    fields = {k: str(v) for k, v in body.items() if v is not None}
    fields["transaction_id"] = f"{run}_{i:08d}"
    return fields


def _append(client: redis.Redis, entries: list[dict[str, str]]) -> None:
    with client.pipeline(transaction=False) as pipe:
        for fields in entries:
            pipe.xadd(STREAM, fields)  # type: ignore[arg-type]
        pipe.execute()


def _paced(
    client: redis.Redis, entries: list[dict[str, str]], rate: float
) -> tuple[float, list[float], float]:
    """Append ``entries`` open loop, entry k due ``k / rate`` seconds after the start: every
    ``STEP_S`` all entries due by then go in one pipeline. The offered rate, each append's lag
    behind the due time of its oldest entry (seconds), and the producer's CPU share (%)."""
    lags: list[float] = []
    sent, tick = 0, 0
    cpu = time.process_time()
    started = time.perf_counter()
    while sent < len(entries):
        tick += 1  # ticks on a fixed grid: a late one does not push the later ones back
        time.sleep(max(0.0, started + tick * STEP_S - time.perf_counter()))
        now = time.perf_counter()
        due = min(len(entries), int((now - started) * rate) + 1)
        if due > sent:
            lags.append(now - (started + sent / rate))
            _append(client, entries[sent:due])
            sent = due
    elapsed = time.perf_counter() - started
    return sent / elapsed, lags, 100.0 * (time.process_time() - cpu) / elapsed


def _millis(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


def _wait_decisions(client: redis.Redis, count: int, process: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.xlen(DECISIONS) < count:
        if process.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"stream scoring: {client.xlen(DECISIONS)} of {count} decisions; see {process.log}"
            )
        time.sleep(0.01)


def _latencies_ms(client: redis.Redis, after: bytes) -> list[float]:
    """Append-to-decision time of each decision written after ``after`` (an output id)."""
    out: list[float] = []
    start = b"(" + after
    while True:
        entries = client.xrange(DECISIONS, min=start, count=10_000)
        if not entries:
            return out
        for entry_id, fields in entries:
            out.append(float(_millis(entry_id) - _millis(fields[b"event_id"])))
        start = b"(" + entries[-1][0]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stream_rows(
    bench: ModuleType,
    env: dict[str, str],
    redis_url: str,
    bodies: list[dict],
    logs: Path,
    duration: float,
    events: int = 20_000,
) -> tuple[list[dict], dict[str, float]]:
    """Saturation and half-rate rows; ratios other than the HTTP one (run.py adds it)."""
    host, _, port = redis_url.rpartition(":")
    client = redis.Redis(host=host, port=int(port))
    client.delete(STREAM, DECISIONS, f"{STREAM}:dead")
    cmd = [sys.executable, "-m", "scoring_service", "stream-score", "--redis", redis_url]
    cmd += ["--stream", STREAM, "--decisions", DECISIONS, "--consumer", "bench-1"]
    cmd += ["--dedup-days", "0.01"]
    rows: list[dict] = []
    with bench.running("stream_scoring", cmd, env, logs) as process:
        process.wait_log("scoring bench:payments", count=1)
        # warm-up: the first batches open connections and sessions
        _append(client, [_fields(bodies[i % len(bodies)], i, "warm") for i in range(2_000)])
        _wait_decisions(client, 2_000, process, 120.0)
        # saturation
        entries = [_fields(bodies[i % len(bodies)], i, "sat") for i in range(events)]
        (last_before,) = client.xrevrange(DECISIONS, count=1)
        _append(client, entries)
        _wait_decisions(client, 2_000 + events, process, 600.0)
        first_in = client.xrange(STREAM, min="-", max="+", count=2_001)[-1][0]
        (last_out,) = client.xrevrange(DECISIONS, count=1)
        seconds = max(_millis(last_out[0]) - _millis(first_in), 1) / 1000.0
        rate = events / seconds
        sat = _latencies_ms(client, last_before[0])
        rows.append(
            {
                "name": "stream scoring, 1 process, saturation",
                "concurrency": 1,
                "rps": round(rate, 1),
                "p50_ms": round(statistics.median(sat), 3),
                "p99_ms": round(_percentile(sat, 0.99), 3),
                "events": events,
            }
        )
        # half the saturated rate, open loop
        (last_before,) = client.xrevrange(DECISIONS, count=1)
        target = rate / 2
        n = max(1, round(target * duration))
        half_entries = [_fields(bodies[i % len(bodies)], i, "half") for i in range(n)]
        offered, lags, producer_cpu = _paced(client, half_entries, target)
        _wait_decisions(client, 2_000 + events + n, process, 600.0)
        half = _latencies_ms(client, last_before[0])
        rows.append(
            {
                "name": "stream scoring, 1 process, half the saturated rate",
                "concurrency": 1,
                "rps": round(offered, 1),
                "p50_ms": round(statistics.median(half), 3),
                "p99_ms": round(_percentile(half, 0.99), 3),
                "max_ms": round(max(half), 3),
                "events": n,
                "offered_rps": round(target, 1),
                "send_lag_p99_ms": round(1000 * _percentile(lags, 0.99), 3),
                "send_lag_max_ms": round(1000 * max(lags), 3),
                "producer_cpu_percent": round(producer_cpu, 1),
            }
        )
    client.close()
    ratios = {
        "stream_events_per_s": rate,
        "stream_half_rate_p50_ms": statistics.median(half),
        "stream_half_rate_p99_ms": _percentile(half, 0.99),
    }
    return rows, ratios
