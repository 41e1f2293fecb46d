"""The prediction log of a real service process, stopped under traffic by SIGTERM or SIGKILL.

`python -m scoring_service serve` runs with the prediction log on while client threads score
payments one after another. Every answer a client received (a 200 with its request id) counts
as answered. Then the process gets a signal:

- SIGTERM: uvicorn finishes the calls in flight and the lifespan closes the log (drain, roll):
  every answered request is in the parquet log. The journal rolls into parquet every second
  meanwhile, and the queue is large enough that nothing is dropped for overload;
- SIGKILL: nothing runs after the signal. The journal written so far survives and the next
  start (``PredictionLog.recover``, here called directly) turns it into parquet; what is lost
  is what was offered but not yet appended: at most the queue plus the batch the writer had
  taken from it, ``2 * queue_size + 1`` entries (scoring_service/monitoring/prediction_log.py).
  The queue
  is small here, so that bound means something; the journal does not roll during the run, so
  the writer only appends (milliseconds) and the queue does not overflow.

Either way the service must not have dropped an answer for overload before the signal (the
``scoring_prediction_log_dropped_total`` counter, read just before): drops are counted, not lost
to a stop.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from feature_repo import prediction_log as plog
from feature_repo.domain import load_domain
from scoring_service.monitoring.prediction_log import PredictionLog
from tests.fixtures.load import Load
from tests.fixtures.service import Replica, as_request, launch_replica

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

KILL_QUEUE_SIZE = 32
CLIENTS = 3
TRAFFIC_S = 3.0
# Offered but not appended when the process dies: the queue, and one batch the writer took.
KILL_BOUND = 2 * KILL_QUEUE_SIZE + 1
DROPPED = "scoring_prediction_log_dropped_total "


def serve_with_log(
    sqlite_repo: Path,
    model_root: Path,
    tmp_path: Path,
    log_dir: Path,
    queue_size: int,
    roll_seconds: float,
) -> Replica:
    replica = launch_replica(
        sqlite_repo,
        sqlite_repo / "feature_store.yaml",
        model_root,
        tmp_path,
        prediction_log_dir=str(log_dir),
        prediction_log_queue_size=str(queue_size),
        prediction_log_roll_seconds=str(roll_seconds),
    )
    replica.wait_ready()
    return replica


def dropped(replica: Replica) -> float:
    """The service's count of answers the log dropped for overload."""
    text = httpx.get(f"{replica.url}/metrics", timeout=30.0).text
    return sum(
        float(line[len(DROPPED) :]) for line in text.splitlines() if line.startswith(DROPPED)
    )


def traffic(url: str, bodies: list[dict]) -> Load:
    """Client threads scoring payments, each under its own transaction id, until the service
    stops answering."""

    def body_for(i: int) -> dict:
        return {**bodies[i % len(bodies)], "transaction_id": f"tx_sig_{i}"}

    return Load(
        url,
        bodies,
        threads=CLIENTS,
        timeout_s=30.0,
        pause_s=0.0,
        body_for=body_for,
        stop_when_gone=True,
    )


def run_until(replica: Replica, bodies: list[dict], signum: signal.Signals) -> list[str]:
    """Score under traffic for a while, then signal the process mid-stream: the request ids
    answered before it stopped answering."""
    with traffic(replica.url, bodies) as load:
        deadline = time.monotonic() + TRAFFIC_S
        while time.monotonic() < deadline or len(load.answered_ids()) < 20:
            time.sleep(0.05)
        assert dropped(replica) == 0, "the log dropped answers for overload"
        replica.send(signum)
        replica.process.wait(timeout=60)
    return load.answered_ids()


def logged_ids(root: Path) -> set[str]:
    if not root.is_dir():
        return set()
    return set(plog.read(root, columns=[plog.REQUEST_ID])[plog.REQUEST_ID].to_pylist())


def test_sigterm_loses_no_answered_request(
    sqlite_repo: Path, model_root: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    replica = serve_with_log(sqlite_repo, model_root, tmp_path, log_dir, 10_000, 1.0)
    bodies = [as_request(row) for _, row in recent.tail(50).iterrows()]
    try:
        answered = run_until(replica, bodies, signal.SIGTERM)
    finally:
        replica.stop()
    # uvicorn shuts down gracefully, then ends by the signal it was sent.
    assert replica.process.returncode in (0, -signal.SIGTERM), replica.logs()
    assert "Application shutdown complete" in replica.logs()
    assert len(answered) >= 20
    root = log_dir / "fraud"
    assert not list((root / "_journal").glob("*.arrows")), "graceful shutdown rolls the journal"
    missing = set(answered) - logged_ids(root)
    assert not missing, f"{len(missing)} answered requests are not in the log"


def test_sigkill_loses_at_most_the_queue(
    sqlite_repo: Path, model_root: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    replica = serve_with_log(sqlite_repo, model_root, tmp_path, log_dir, KILL_QUEUE_SIZE, 600.0)
    bodies = [as_request(row) for _, row in recent.tail(50).iterrows()]
    try:
        answered = run_until(replica, bodies, signal.SIGKILL)
    finally:
        replica.stop()
    assert replica.process.returncode == -signal.SIGKILL
    assert len(answered) >= 20
    # What the next start does first: the killed process's journal becomes parquet.
    root = log_dir / "fraud"
    spec = load_domain(sqlite_repo)
    PredictionLog(root, spec.join_keys).recover()
    logged = logged_ids(root)
    missing = set(answered) - logged
    assert len(missing) <= KILL_BOUND, f"{len(missing)} answered requests lost"
    assert len(logged & set(answered)) >= len(answered) - KILL_BOUND
