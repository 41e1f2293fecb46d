"""The score routes' serving path (``api/endpoints.py``) and the process around it, end to end.

Answers are what the documented response models say, the batch route's columns give every
transaction what a single call gives it, the garbage-collector policy is in force after start-up,
with several workers the metrics are their sum, and a deadline missed on a busy event loop is
overload, not an outage. The endpoints' own order of work (overload refused before the body is
read, the deadline counted from arrival) is in tests/scoring_service/api/test_endpoints.py,
logging on a thread in tests/scoring_service/core/test_logs.py.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring_service.api.app import create_app
from scoring_service.core.errors import FeatureStoreUnavailable, Overloaded
from scoring_service.core.security import hash_key
from scoring_service.core.settings import Settings
from scoring_service.scoring.resilience import Deadline, ScoringGuard
from tests.conftest import ROOT, free_port
from tests.fixtures import processes
from tests.fixtures.service import (
    API_HEADERS,
    API_KEY,
    FRAUD_API,
    as_request,
    settings_for,
)

pytestmark = pytest.mark.clock

ScoreResponse = FRAUD_API.response
ScoreBatchResponse = FRAUD_API.batch_response
EntityScoreResponse = FRAUD_API.entity_response
canonical_ip = FRAUD_API.spec.request_fields["ip_address"].parse

SCORE = "/v1/transactions/score"
BATCH = "/v1/transactions/score-batch"


@pytest.fixture(scope="module")
def served(redis_repo: Path, model_root: Path) -> Iterator[TestClient]:
    """The app on Redis; batches of 8 rows and more are scored as columns (score_columns)."""
    settings = settings_for(redis_repo, model_root, "feature_store.redis.yaml", batch_max_rows=8)
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        yield client


def same_json(model: Any, body: dict) -> None:
    """The body is exactly what the response model produces for it."""
    assert model.model_validate(body).model_dump(mode="json") == body


def test_answers_are_their_response_models(served: TestClient, recent: pd.DataFrame) -> None:
    row = recent.iloc[-1]
    single = served.post(SCORE, json=as_request(row))
    assert single.status_code == 200, single.text
    assert single.headers["content-type"] == "application/json"
    same_json(ScoreResponse, single.json())
    bodies = [as_request(r) for _, r in recent.tail(12).iterrows()]
    batch = served.post(BATCH, json={"transactions": bodies})
    assert batch.status_code == 200, batch.text
    same_json(ScoreBatchResponse, batch.json())
    for path in (
        f"/v1/ip-addresses/{row.ip_address}/score",
        f"/v1/cards/{row.card_id}/score",
        f"/v1/merchants/{row.merchant_id}/score",
    ):
        entity = served.get(path)
        assert entity.status_code == 200, entity.text
        same_json(EntityScoreResponse, entity.json())


def test_batch_columns_equal_single_calls(served: TestClient, recent: pd.DataFrame) -> None:
    """A batch scored as columns gives each transaction the single route's answer."""
    bodies = [as_request(r) for _, r in recent.tail(40).iterrows()]
    bodies.append({**bodies[0], "transaction_id": "tx_unknown", "card_id": "card_never_seen"})
    batch = served.post(BATCH, json={"transactions": bodies})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["transaction_id"] for r in results] == [b["transaction_id"] for b in bodies]
    for body, result in zip(bodies, results, strict=True):
        single = served.post(SCORE, json=body).json()
        assert single["score"] == pytest.approx(result["score"], abs=1e-7)
        assert (single["label"], single["reasons"]) == (result["label"], result["reasons"])
        for key, fresh in single["feature_freshness"].items():
            other = result["feature_freshness"][key]
            assert fresh["status"] == other["status"]
            assert (fresh["age_seconds"] is None) == (other["age_seconds"] is None)


def test_garbage_collector_policy(served: TestClient) -> None:
    """After start-up the start-up heap is frozen and the thresholds are the settings'."""
    settings = served.app.state.settings  # type: ignore[attr-defined]
    assert settings.gc_freeze
    assert gc.get_threshold() == settings.gc_thresholds
    assert gc.get_freeze_count() > 10_000


dotted = st.lists(
    st.one_of(st.integers(0, 300).map(str), st.from_regex(r"0[0-9]{1,2}", fullmatch=True)),
    min_size=3,
    max_size=5,
).map(".".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(dotted, st.ip_addresses().map(str)), st.sampled_from(["", " ", "\t"]))
def test_canonical_ip_fast_path_agrees_with_ipaddress(text: str, pad: str) -> None:
    try:
        expected = str(ipaddress.ip_address(text))
    except ValueError:
        with pytest.raises(ValueError, match="not a valid IPv4 or IPv6"):
            canonical_ip(pad + text + pad)
        return
    assert canonical_ip(pad + text + pad) == expected


def _worker_counts(directory: Path) -> dict[str, float]:
    """Per worker (its metric file), scoring_request_seconds observations of every route."""
    from prometheus_client.mmap_dict import MmapedDict

    counts = {}
    for path in directory.glob("histogram_*.db"):
        total = 0.0
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, _, _ = json.loads(key)
            # Files hold each bucket's own observations (not cumulative): the count is their sum.
            if sample == "scoring_request_seconds_bucket":
                total += value
        counts[path.stem.rsplit("_", 1)[1]] = total
    return counts


def _scraped(text: str) -> float:
    """scoring_request_seconds_count in Prometheus text, summed over its label sets."""
    total = 0.0
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name == "scoring_request_seconds_count":
            total += float(rest.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_metrics_are_summed_over_workers(
    sqlite_repo: Path, model_root: Path, valid_body: dict, tmp_path: Path
) -> None:
    """Two workers on one socket: every scrape, whichever worker answers it, counts the
    requests both served."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = {
        **os.environ,
        "SCORING_FEATURE_REPO": str(sqlite_repo),
        "SCORING_MODEL_ROOT": str(model_root),
        "SCORING_API_KEY_HASHES": hash_key(API_KEY),
        "SCORING_DEADLINE_MS": "10000",
        "SCORING_WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    env.pop("PROMETHEUS_MULTIPROCESS_DIR", None)
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        process = processes.start(
            [sys.executable, "-m", "scoring_service", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while log.read_text(errors="replace").count("ready: model") < 2:
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        sent = 0
        # Fresh connections until both workers have answered some (bounded).
        while sent < 400:
            for _ in range(20):
                answer = httpx.post(f"{url}{SCORE}", json=valid_body, headers=API_HEADERS)
                assert answer.status_code == 200, answer.text
                sent += 1
            per_worker = _worker_counts(metrics_dir)
            if sum(1 for n in per_worker.values() if n > 0) >= 2:
                break
        assert sum(1 for n in per_worker.values() if n > 0) >= 2, per_worker
        assert sum(per_worker.values()) == sent
        for _ in range(6):
            scraped = httpx.get(f"{url}/metrics").text
            assert _scraped(scraped) == sent
        assert "scoring_in_flight 0.0" in scraped
    finally:
        processes.stop(process, signal.SIGTERM, timeout=30)
    assert "stopped" in log.read_text(errors="replace")


def test_a_deadline_missed_on_a_busy_loop_is_overload_not_an_outage() -> None:
    """Late because the service is saturated: 503 overloaded, and the circuit stays closed;
    late on an idle loop (the store is slow): the outage policy answers."""
    settings = Settings(api_key_hashes=(hash_key(API_KEY),), breaker_failures=1)

    async def late_call(busy: bool) -> BaseException | list[Any] | None:
        guard = ScoringGuard(settings)
        guard.breaker.last_success -= 10  # no call has got its features for a while
        assert guard.admit()
        guard.release()
        stop = asyncio.Event()

        async def hog() -> None:  # holds the loop 30 ms at a time, as a flood of work would
            while not stop.is_set():
                time.sleep(0.03)
                await asyncio.sleep(0)

        hogging = asyncio.create_task(hog()) if busy else None
        await asyncio.sleep(0.05)
        try:
            deadline = Deadline(expires_at=time.monotonic() + 0.05, budget_ms=50)
            await guard.run(lambda: asyncio.sleep(1.0), 1, deadline)
        except (Overloaded, FeatureStoreUnavailable) as exc:
            answer: BaseException | None = exc
        else:
            answer = None
        finally:
            stop.set()
            if hogging is not None:
                await hogging
        assert guard.breaker.is_open is (not busy)
        return answer

    busy = asyncio.run(late_call(busy=True))
    assert isinstance(busy, Overloaded), busy
    assert busy.headers["Retry-After"] == "1"
    idle = asyncio.run(late_call(busy=False))
    assert isinstance(idle, FeatureStoreUnavailable), idle
