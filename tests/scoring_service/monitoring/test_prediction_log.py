"""The prediction log's writer: nothing offered is lost on close, a full queue drops and counts,
a killed writer's journal is recovered whole up to its last complete append, sampling is
deterministic; entity ids are pseudonymized unless configured raw, files are the service user's
only, and partitions past retention are deleted."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from feature_repo import clock
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
        sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})
        from tests.scoring_service.monitoring.test_prediction_log import entry, KEYS
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


# --- what the log keeps of people: pseudonymized ids, private files, retention ------------------


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


def test_entity_ids_are_written_as_their_keyed_hash(tmp_path: Path) -> None:
    key = log_format.pseudonym_key(tmp_path)
    log = PredictionLog(tmp_path, KEYS, roll_seconds=3600, id_key=key)
    log.start()
    log.offer([entry(i) for i in range(3)])
    log.close()
    rows = {r["request_id"]: r for r in log_format.read(tmp_path).to_pylist()}
    hashed = rows["req-1"]["card_id"]
    assert hashed == log_format.pseudonymize("card_1", key)
    assert hashed != "card_1" and len(hashed) == 32
    assert rows["req-1"]["ip_address"] is None  # absent stays absent
    # The same id under the same key joins; under another key it does not.
    assert log_format.pseudonymize("card_1", key) == hashed
    assert log_format.pseudonymize("card_1", b"another key of 16+ bytes") != hashed
    text = b"".join(p.read_bytes() for p in tmp_path.rglob("*.parquet"))
    assert b"card_1" not in text and b"card_2" not in text


def test_raw_ids_only_when_configured(tmp_path: Path) -> None:
    from scoring_service.core.settings import Settings
    from scoring_service.served import log_id_key

    folder = tmp_path / "fraud"
    default = log_id_key(folder, Settings(prediction_log_dir=tmp_path))
    assert default is not None and default == log_format.pseudonym_key(folder)  # one key kept
    assert log_id_key(folder, Settings(prediction_log_raw_ids=True)) is None
    given = Settings(prediction_log_id_key="a shared key for every replica")
    assert log_id_key(folder, given) == b"a shared key for every replica"
    log = PredictionLog(folder, KEYS, roll_seconds=3600, id_key=None)
    log.start()
    log.offer([entry(7)])
    log.close()
    assert log_format.read(folder)["card_id"].to_pylist() == ["card_7"]


def test_a_damaged_key_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / log_format.KEY_FILE).write_text("not hex")
    with pytest.raises(ValueError, match="restore it, or delete it to start a new one"):
        log_format.pseudonym_key(tmp_path)


def test_files_and_folders_are_the_service_users_only(tmp_path: Path) -> None:
    root = tmp_path / "log"
    log = PredictionLog(root, KEYS, roll_seconds=3600, id_key=log_format.pseudonym_key(root))
    log.start()
    log.offer([entry(i) for i in range(5)])
    # The journal while it is being written, then the parquet after the roll.
    deadline = time.monotonic() + 60
    while not list((root / "_journal").glob(f"*{JOURNAL_SUFFIX}")):
        assert time.monotonic() < deadline, "the writer never opened a journal"
        time.sleep(0.01)
    journal = next((root / "_journal").glob(f"*{JOURNAL_SUFFIX}"))
    assert journal.stat().st_mode & 0o777 == 0o600
    log.close()
    found = modes(root)
    assert found[log_format.KEY_FILE] == 0o600
    assert any(name.endswith(".parquet") for name in found)
    for name, mode in found.items():
        is_dir = (root / name).is_dir() if name != "." else True
        assert mode == (0o700 if is_dir else 0o600), (name, oct(mode))


def test_partitions_past_retention_are_deleted_by_the_writer(tmp_path: Path) -> None:
    now = clock.now()
    old = [entry(i) for i in range(3)]
    recent = [entry(i) for i in range(3, 6)]
    table = PredictionLog(tmp_path, KEYS)._table
    for entries, days_ago, name in ((old, 40, "old"), (recent, 5, "recent")):
        at = now - timedelta(days=days_ago)
        moved = [dataclasses.replace(e, ts=at) for e in entries]
        log_format.write(tmp_path, table(moved), name)
    log = PredictionLog(tmp_path, KEYS, roll_seconds=0.05, retention_days=30)
    log.start()  # deletes at start
    days = sorted(p.name for p in tmp_path.glob("date=*"))
    assert days == [f"date={log_format.day_of(now - timedelta(days=5))}"]
    # ... and each time the journal rolls.
    log_format.write(
        tmp_path, table([dataclasses.replace(old[0], ts=now - timedelta(days=31))]), "late"
    )
    log.offer([dataclasses.replace(entry(9), ts=now)])
    deadline = time.monotonic() + 60
    while any(
        p.name == f"date={log_format.day_of(now - timedelta(days=31))}"
        for p in tmp_path.glob("date=*")
    ):
        assert time.monotonic() < deadline, "the writer kept a partition past retention"
        time.sleep(0.02)
    log.close()
    kept = log_format.read(tmp_path)[log_format.REQUEST_ID].to_pylist()
    assert sorted(kept) == sorted(["req-3", "req-4", "req-5", "req-9"])
