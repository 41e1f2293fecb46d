"""Admission on a real service process under open-loop load (bench/openloop.py, its own process):
real-time calls are shed last and lower classes first, health is never shed, and a key flooding
past its quota gets 429s while another key gets none.

The verdicts compare what the streams got with each other (shares of refusals, counts bounded by
the quota's tokens), never with a wall-clock margin.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from scoring_service.core.security import hash_key
from tests.conftest import ROOT
from tests.fixtures.service import (
    ANALYST_KEY,
    API_HEADERS,
    API_KEY,
    FRAUD_API,
    as_request,
    launch_replica,
)

pytestmark = pytest.mark.slow

SECONDS = 4.0


def open_loop(url: str, streams: list[dict], seconds: float = SECONDS) -> dict[str, dict]:
    """Run the open-loop generator in its own process; each stream's summary by name."""
    command = [sys.executable, "-m", "bench.openloop", "--url", url, "--seconds", str(seconds)]
    for stream in streams:
        command += ["--stream", json.dumps(stream)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {s["stream"]: s for s in json.loads(done.stdout)["streams"]}


def burst(url: str, body: dict, key: str, calls: int) -> httpx.Response:
    """``calls`` calls at once with one key; the first refused one (else the last)."""

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(FRAUD_API.score_path, json=body, headers={"X-API-Key": key})
                    for _ in range(calls)
                )
            )

    answers = asyncio.run(run())
    return next((a for a in answers if a.status_code != 200), answers[-1])


def refused_share(summary: dict) -> float:
    answers = summary["answers"]
    total = sum(answers.values())
    assert total > 0, summary
    return sum(n for status, n in answers.items() if status != "200") / total


def write_bodies(path: Path, bodies: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(body) for body in bodies) + "\n")
    return str(path)


def test_lower_classes_are_shed_first(
    sqlite_repo: Path, model_root: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    """A small fixed limit (4 in flight) and far more arrivals than it admits: the real-time
    stream is refused least, the batch, explanation and entity streams more, health never;
    every refusal is 503 overloaded."""
    rows = [as_request(row) for _, row in recent.tail(40).iterrows()]
    one = write_bodies(tmp_path / "one.jsonl", rows)
    batch = write_bodies(tmp_path / "batch.jsonl", [{FRAUD_API.collection: rows[:20]}])
    card = rows[0]["card_id"]
    replica = launch_replica(
        sqlite_repo,
        sqlite_repo / "feature_store.yaml",
        model_root,
        tmp_path,
        env={"SCORING_ANALYST_KEY_HASHES": hash_key(ANALYST_KEY)},
        prediction_log_dir=str(tmp_path / "log"),
        admission_initial_limit="4",
        admission_min_limit="4",
        max_in_flight="4",
    )
    replica.wait_ready()
    headers = {"X-API-Key": API_KEY}
    # An answer to explain under the load (logged before it starts).
    explained = {**rows[1], "transaction_id": "tx_explained_under_load"}
    first = httpx.post(
        f"{replica.url}{FRAUD_API.score_path}", json=explained, headers=API_HEADERS, timeout=30
    )
    assert first.status_code == 200, first.text
    try:
        got = open_loop(
            replica.url,
            [
                {
                    "name": "realtime",
                    "path": FRAUD_API.score_path,
                    "rate": 600,
                    "bodies": one,
                    "headers": headers,
                },
                {
                    "name": "batch",
                    "path": FRAUD_API.batch_path,
                    "rate": 200,
                    "bodies": batch,
                    "headers": headers,
                },
                {
                    "name": "entity",
                    "method": "GET",
                    "path": f"/v1/cards/{card}/score",
                    "rate": 200,
                    "headers": headers,
                },
                {
                    "name": "explain",
                    "method": "GET",
                    "path": "/v1/transactions/tx_explained_under_load/explanation",
                    "rate": 200,
                    "headers": {"X-API-Key": ANALYST_KEY},
                },
                {"name": "health", "method": "GET", "path": "/health/live", "rate": 20},
            ],
        )
        refused = httpx.post(
            f"{replica.url}{FRAUD_API.batch_path}",
            json={FRAUD_API.collection: rows[:1]},
            headers=API_HEADERS,
            timeout=30,
        )
    finally:
        replica.stop()
    realtime, batch_got, entity, explain, health = (
        got[n] for n in ("realtime", "batch", "entity", "explain", "health")
    )
    assert health["answers"] == {"200": health["sent"]}, health
    assert realtime["answers"].get("200", 0) > 0, realtime
    assert refused_share(batch_got) > 0, batch_got  # the load did reach the limit
    assert refused_share(realtime) < refused_share(batch_got), (realtime, batch_got)
    assert refused_share(realtime) < refused_share(entity), (realtime, entity)
    assert refused_share(realtime) < refused_share(explain), (realtime, explain)
    assert explain["answers"].get("200", 0) + explain["answers"].get("503", 0) == sum(
        explain["answers"].values()
    ), explain  # the explanation itself answers when admitted
    for summary in (realtime, batch_got, entity, explain):
        assert set(summary["codes"]) <= {"overloaded"}, summary
        assert not summary["errors"], summary
    assert refused.status_code == 200 or refused.headers.get("retry-after")


def test_a_flooding_key_gets_429_and_another_key_none(
    sqlite_repo: Path, model_root: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    """Key 'noisy' may make 20 calls a second and hold a quarter of the limit; it sends ten
    times that. It gets 429 quota_exceeded past its tokens; key 'calm', beside it, gets every
    call answered 200."""
    noisy, calm = "noisy-scoring-key", API_KEY
    rate = 20
    rows = [as_request(row) for _, row in recent.tail(40).iterrows()]
    one = write_bodies(tmp_path / "one.jsonl", rows)
    replica = launch_replica(
        sqlite_repo,
        sqlite_repo / "feature_store.yaml",
        model_root,
        tmp_path,
        api_key_hashes=f"{hash_key(calm)},{hash_key(noisy)}",
        key_quotas=f"{hash_key(noisy)}={rate}/0.25",
    )
    replica.wait_ready()
    try:
        got = open_loop(
            replica.url,
            [
                {
                    "name": "noisy",
                    "path": FRAUD_API.score_path,
                    "rate": 10 * rate,
                    "bodies": one,
                    "headers": {"X-API-Key": noisy},
                },
                {
                    "name": "calm",
                    "path": FRAUD_API.score_path,
                    "rate": 10,
                    "bodies": one,
                    "headers": {"X-API-Key": calm},
                },
            ],
        )
        refusal = burst(replica.url, rows[0], noisy, 5 * rate)
    finally:
        replica.stop()
    noisy_got, calm_got = got["noisy"], got["calm"]
    assert calm_got["answers"] == {"200": calm_got["sent"]}, calm_got
    assert noisy_got["codes"].get("quota_exceeded", 0) > 0, noisy_got
    # At most a full bucket at the start plus the rate for the run's length (and its drain).
    assert noisy_got["answers"].get("200", 0) <= rate * (SECONDS + 2) + rate, noisy_got
    assert refusal.status_code == 429
    assert refusal.json()["code"] == "quota_exceeded"
    assert int(refusal.headers["retry-after"]) >= 1
