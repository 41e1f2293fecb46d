"""``make bench-freshness``: from a transaction event appended to the stream to a changed score.

Setup, in a temporary folder (nothing shared with a running system):

1. generate transactions ending now, aggregate their hourly snapshots and replay them through
   the streaming window code, in a copy of the feature repository;
2. a private redis-server on a free port; ``feast apply`` (the Redis yaml bound to it);
   materialize every view;
3. train ``fraud_model_v2`` through the real pipeline (or reuse ``--model-root``);
4. start the service (``python -m scoring_service serve`` with ``SCORING_MODEL_VERSION=v2`` on
   the Redis store) and the stream consumer (``python -m feature_pipelines stream`` with its
   default settings) as processes of their own, as in production.

Measurement, one event at a time (``--events``, at least 1,000): a card-testing probe (a small
amount from a tester's IP abroad) for a card with no activity in the last hour, paired with an
IP never seen before. The score of that card's next probe is read from the service; the event is
appended with ``XADD``; the same request is then repeated every ``--poll-ms`` until its score
differs. The latency runs from just before ``XADD`` to the first answer that differs, so it
covers the stream, the consumer's read, window update and push, the online store and the
service's read and prediction. An event whose score has not changed after ``--timeout``
seconds is checked in the online store: when its row is there, the model simply does not react
to it (``unchanged_written``, left out of the percentiles); when it is not, the event was not
fresh in time (``late``, counted at the timeout).

Writes ``bench/results/freshness.json``.

Why one module of this length: one benchmark script: its setup, its processes and its measurement
loop, each a function of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feature_pipelines.fraud.aggregate import aggregate  # noqa: E402
from feature_pipelines.fraud.events import STREAM, TransactionEvent  # noqa: E402
from feature_pipelines.fraud.generate import generate_transactions, write_transactions  # noqa: E402
from feature_pipelines.fraud.schema import TABLE_FILES  # noqa: E402
from feature_pipelines.fraud.windows import CATALOGUE, STATE_PREFIX  # noqa: E402
from feature_pipelines.streaming.replay import stream_tables, write_stream_tables  # noqa: E402
from feature_pipelines.streaming.source import append_events  # noqa: E402
from feature_pipelines.streaming.state import state_key  # noqa: E402
from feature_pipelines.tables import write_feature_tables  # noqa: E402
from feature_repo import clock  # noqa: E402
from scoring_service.core.security import hash_key, new_key  # noqa: E402

SCORE_PATH = "/v1/transactions/score"
YAML = "feature_store.freshness.yaml"
TARGET_P99_MS = 1000.0


def log(message: str) -> None:
    """Progress on stderr (this is a script, not library code)."""
    print(f"[freshness {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process with its output in a log file; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log = self.log_path.open("w")
        self.popen = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT
        )

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}:\n"
                + self.log_path.read_text()[-4000:]
            )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def build_world(work: Path, rows: int, days: int, redis_address: str) -> tuple[Path, pd.DataFrame]:
    """Feature repo with batch and replayed streaming tables, applied and materialized."""
    from feast import FeatureStore

    end = clock.now().replace(second=0, microsecond=0)
    transactions = generate_transactions(rows, seed=7, days=days, end=end)
    write_transactions(transactions, work / "transactions.parquet")
    repo = work / "feature_repo"
    repo.mkdir()
    for item in (ROOT / "feature_repo" / "fraud").iterdir():
        if item.suffix in (".py", ".yaml"):
            shutil.copy(item, repo / item.name)
    write_feature_tables(aggregate(transactions, end=end), repo / "data", TABLE_FILES)
    write_stream_tables(CATALOGUE, stream_tables(CATALOGUE, transactions), repo / "data")
    text = (repo / "feature_store.redis.yaml").read_text()
    (repo / YAML).write_text(text.replace("${REDIS_CONNECTION_STRING}", redis_address))
    subprocess.run(
        [str(Path(sys.executable).parent / "feast"), "-f", YAML, "apply"],
        cwd=repo,
        check=True,
        capture_output=True,
    )
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / YAML)
    store.materialize(start_date=end - timedelta(days=31), end_date=end + timedelta(minutes=1))
    return repo, transactions


def train_v2(repo: Path, transactions: Path, root: Path) -> dict[str, Any]:
    from models.train import train

    result = train(
        repo_path=repo,
        events_path=transactions,
        output_root=root,
        feature_service="fraud_model_v2",
        yaml_path=repo / YAML,
    )
    holdout = result.manifest.metrics["holdout"]
    return {"pr_auc": holdout["pr_auc"], "roc_auc": holdout["roc_auc"]}


def probes(transactions: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    """Request bodies: quiet cards (no activity in the last hour) with never-seen tester IPs."""
    end = transactions["event_timestamp"].max()
    last = transactions.sort_values("event_timestamp").groupby("card_id").tail(1)
    quiet = last[
        (last["event_timestamp"] < end - timedelta(hours=1))
        & (last["event_timestamp"] > end - timedelta(days=25))
    ]
    if len(quiet) < n:
        raise SystemExit(f"only {len(quiet)} quiet cards for {n} events; generate more --rows")
    merchants = transactions[transactions["merchant_category"] == "digital_goods"]["merchant_id"]
    chosen = quiet.sample(n, random_state=11).reset_index(drop=True)
    rng = np.random.default_rng(11)
    return [
        {
            "transaction_id": f"tx_fresh_{k:06d}",
            "amount": round(float(rng.uniform(0.5, 3.0)), 2),
            "currency": row.currency,
            # 198.18.0.0/15: benchmarking addresses, never in the generated data.
            "ip_address": f"198.18.{k // 250}.{k % 250 + 1}",
            "card_id": row.card_id,
            "merchant_id": str(merchants.iloc[k % len(merchants)]),
            "card_country": row.card_country,
            "ip_country": "RO" if row.card_country != "RO" else "NG",
            "merchant_country": "US",
        }
        for k, row in enumerate(chosen.itertuples())
    ]


def as_event(body: dict[str, Any]) -> TransactionEvent:
    return TransactionEvent(
        transaction_id=body["transaction_id"],
        event_time_us=int(clock.time() * 1_000_000),
        amount=body["amount"],
        ip_address=body["ip_address"],
        card_id=body["card_id"],
        merchant_id=body["merchant_id"],
        card_country=body["card_country"],
        ip_country=body["ip_country"],
        merchant_country=body["merchant_country"],
        currency=body["currency"],
    )


def wait_ready(client: httpx.Client, service: Process, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.check()
        try:
            if client.get("/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the service did not become ready")


def score(client: httpx.Client, body: dict[str, Any]) -> float | None:
    """The score, or None for a 503 (overloaded or past its deadline: no answer yet)."""
    answer = client.post(SCORE_PATH, json=body)
    if answer.status_code == 503:
        return None
    answer.raise_for_status()
    return float(answer.json()["score"])


def row_written(client: redis.Redis, card_id: str) -> bool:
    """Whether the consumer's window state holds the card (its row was pushed before the ack)."""
    return bool(client.exists(state_key(STATE_PREFIX, "card", card_id)))


def measure(
    client: httpx.Client,
    stream: redis.Redis,
    bodies: list[dict[str, Any]],
    poll_s: float,
    timeout: float,
) -> dict[str, Any]:
    latencies: list[float] = []
    unchanged_written = 0
    late = 0
    unavailable = 0
    for i, body in enumerate(bodies):
        before = score(client, body)
        while before is None:
            unavailable += 1
            before = score(client, body)
        started = time.perf_counter()
        append_events(stream, [as_event(body)], stream=STREAM)
        while True:
            now = score(client, body)
            elapsed = time.perf_counter() - started
            unavailable += now is None
            if now is not None and now != before:
                latencies.append(elapsed)
                break
            if elapsed > timeout:
                if row_written(stream, body["card_id"]):
                    unchanged_written += 1
                else:
                    late += 1
                    latencies.append(timeout)
                break
            time.sleep(poll_s)
        if (i + 1) % 100 == 0:
            ms = np.asarray(latencies) * 1000
            log(
                f"{i + 1}/{len(bodies)} events: p50 {np.percentile(ms, 50):.0f} ms, "
                f"p99 {np.percentile(ms, 99):.0f} ms"
            )
    ms = np.asarray(latencies) * 1000
    return {
        "events": len(bodies),
        "changed": len(latencies) - late,
        "unchanged_written": unchanged_written,
        "late": late,
        "answers_503": unavailable,
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1),
            "p90": round(float(np.percentile(ms, 90)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1),
            "max": round(float(ms.max()), 1),
            "mean": round(float(ms.mean()), 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="Measured events.")
    parser.add_argument("--warmup", type=int, default=30, help="Events before measuring.")
    parser.add_argument("--rows", type=int, default=50_000, help="Generated transactions.")
    parser.add_argument("--days", type=int, default=35, help="Days of generated history.")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="Pause between polls.")
    parser.add_argument("--timeout", type=float, default=3.0, help="Seconds to wait per event.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "freshness.json")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    args = parser.parse_args()

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; run `make setup`")
    work = Path(tempfile.mkdtemp(prefix="freshness-"))
    timings: dict[str, float] = {}
    with ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        redis_port = free_port()
        address = f"127.0.0.1:{redis_port}"
        server = Process(
            "redis",
            [
                binary,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(work),
            ],
            {},
            work,
        )
        stack.callback(server.stop)
        started = time.perf_counter()
        log(f"building the world in {work} ({args.rows:,} transactions)")
        repo, transactions = build_world(work, args.rows, args.days, address)
        timings["world_s"] = time.perf_counter() - started
        started = time.perf_counter()
        log("training fraud_model_v2")
        metrics = train_v2(repo, work / "transactions.parquet", work / "packages")
        timings["train_s"] = time.perf_counter() - started

        api_key = new_key()
        port = free_port()
        service = Process(
            "service",
            [sys.executable, "-m", "scoring_service", "serve"],
            {
                "SCORING_FEATURE_REPO": str(repo),
                "SCORING_FEATURE_STORE_YAML": str(repo / YAML),
                "SCORING_MODEL_ROOT": str(work / "packages"),
                "SCORING_MODEL_VERSION": "v2",
                "SCORING_PORT": str(port),
                "SCORING_API_KEY_HASHES": hash_key(api_key),
                "SCORING_LOG_LEVEL": "warning",
                # Freshness is measured here, not the per-request deadline: on a busy machine
                # the default 50 ms budget would turn slow answers into 503s.
                "SCORING_DEADLINE_MS": "1000",
                "SCORING_STORE_TIMEOUT_MS": "1000",
            },
            work,
        )
        stack.callback(service.stop)
        consumer = Process(
            "consumer",
            [
                sys.executable,
                "-m",
                "feature_pipelines",
                "stream",
                "--repo",
                str(repo),
                "--yaml",
                str(repo / YAML),
                "--redis",
                address,
            ],
            {},
            work,
        )
        stack.callback(consumer.stop)
        client = stack.enter_context(
            httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"X-API-Key": api_key},
                timeout=10.0,
            )
        )
        stream = redis.Redis(port=redis_port)
        stack.callback(stream.close)
        wait_ready(client, service)
        bodies = probes(transactions, args.events + args.warmup)
        log(f"warming up with {args.warmup} events")
        measure(client, stream, bodies[: args.warmup], args.poll_ms / 1000, 60.0)
        consumer.check()
        log(f"measuring {args.events} events")
        result = measure(client, stream, bodies[args.warmup :], args.poll_ms / 1000, args.timeout)
        consumer.check()
        service.check()

    report = {
        "benchmark": "freshness",
        "description": "event appended to the Redis stream -> first changed score from the "
        "service (stream consumer and uvicorn as separate processes, Redis online store, "
        "fraud_model/v2)",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **result,
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": result["latency_ms"]["p99"] <= TARGET_P99_MS,
        "setup": {
            "rows": args.rows,
            "days": args.days,
            "poll_ms": args.poll_ms,
            "timeout_s": args.timeout,
            "consumer": "python -m feature_pipelines stream (defaults: batch 500, block 100 ms, "
            "offline flush 2 s)",
            "model_holdout": {k: round(v, 4) for k, v in metrics.items()},
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    latency = report["latency_ms"]
    print(
        f"freshness over {result['events']} events: p50 {latency['p50']} ms, "
        f"p99 {latency['p99']} ms (target {TARGET_P99_MS:.0f} ms); changed "
        f"{result['changed']}, unchanged but written {result['unchanged_written']}, "
        f"late {result['late']} -> {args.out}"
    )


if __name__ == "__main__":
    main()
