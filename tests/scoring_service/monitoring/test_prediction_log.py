"""The prediction log's writer: nothing offered is lost on close, a full queue drops and counts,
a killed writer's journal is recovered whole up to its last complete append, sampling is
deterministic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from feature_repo import prediction_log as log_format
from scoring_service.core import metrics
from scoring_service.monitoring.prediction_log import JOURNAL_SUFFIX, LogEntry, PredictionLog

KEYS = ["card_id", "ip_address"]


def entry(i: int) -> LogEntry:
    return LogEntry(
        request_id=f"req-{i}",
        business_id=f"tx-{i}",
        ts=datetime(2026, 11, 30, 12, 0, i % 60, tzinfo=UTC),
        domain="fraud",
        deployment="test",
        variant="champion",
        model_version="fraud_model/v1",
        keys={"card_id": f"card_{i}", "ip_address": None},
        features=[float(i), float("nan")],
        feature_names=["a", "b"],
        statuses={"card_id": "present", "ip_address": "not_requested"},
        age_seconds={"card_id": 12.5, "ip_address": None},
        score=0.25,
        label="not_fraud",
        reasons=[],
        latency_ms=1.5,
    )


def test_close_writes_every_entry_as_parquet(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, KEYS, roll_seconds=3600)
    log.start()
    log.offer([entry(i) for i in range(500)])
    log.close()
    table = log_format.read(tmp_path)
    assert sorted(table[log_format.REQUEST_ID].to_pylist()) == sorted(
        f"req-{i}" for i in range(500)
    )
    assert table[log_format.DATE].unique().to_pylist() == ["2026-11-30"]
    assert not list((tmp_path / "_journal").glob(f"*{JOURNAL_SUFFIX}"))
    row = table.filter(pa.compute.equal(table[log_format.REQUEST_ID], "req-3")).to_pylist()[0]
    assert row["card_id"] == "card_3" and row["ip_address"] is None
    assert row["features"][0] == 3.0 and dict(row["statuses"])["card_id"] == "present"


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, KEYS, queue_size=10)  # not started: nothing drains
    before = metrics.PREDICTION_LOG_DROPPED._value.get()
    log.offer([entry(i) for i in range(25)])
    assert metrics.PREDICTION_LOG_DROPPED._value.get() - before == 15


def test_sampling_is_deterministic(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, KEYS, sample_rate=0.25)
    ids = [f"req-{i}" for i in range(4000)]
    chosen = [log.sampled(i) for i in ids]
    assert chosen == [log.sampled(i) for i in ids]
    assert 0.2 < sum(chosen) / len(ids) < 0.3


def test_a_killed_writer_loses_nothing_it_had_appended(tmp_path: Path) -> None:
    """A process appends 300 entries, waits until the journal holds them, and is killed; the
    next start recovers all 300 from its journal."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.scoring_service.test_prediction_log import entry, KEYS
        from scoring_service.monitoring.prediction_log import PredictionLog
        log = PredictionLog(__import__("pathlib").Path({str(tmp_path)!r}), KEYS, roll_seconds=3600)
        log.start()
        log.offer([entry(i) for i in range(300)])
        while log.rows_written < 300:
            time.sleep(0.01)
        print("appended", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "appended" in result.stdout
    assert list((tmp_path / "_journal").glob(f"*{JOURNAL_SUFFIX}")), "the journal is on disk"
    assert not (tmp_path / "date=2026-11-30").exists()
    recovered = PredictionLog(tmp_path, KEYS).recover()
    assert recovered == 300
    assert log_format.read(tmp_path).num_rows == 300
    assert os.listdir(tmp_path / "_journal") == []
