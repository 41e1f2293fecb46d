"""Stream-scoring members as real processes on the stream rig's redis-server and feature repo."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pandas as pd
import pytest
import redis

from feature_pipelines.fraud.events import events_from_frame
from feature_pipelines.streaming.source import append_events
from tests.conftest import ROOT, StreamRig
from tests.fixtures import processes

STREAM = "test:payments"
DECISIONS = "test:decisions"
GROUP = "stream-scoring"
WINDOWS = "feature_pipelines.fraud.windows:CATALOGUE"
STATE_PREFIX = "test:rt"


def payment_events(transactions: pd.DataFrame, n: int) -> list:
    """``n`` payment events with distinct transaction ids, cycling over the generated ones."""
    frame = transactions.sort_values("event_timestamp", kind="stable").tail(2_000)
    rows = frame.iloc[[i % len(frame) for i in range(n)]].copy()
    rows["transaction_id"] = [f"stx_{i:07d}" for i in range(n)]
    return events_from_frame(rows.reset_index(drop=True))


@dataclass
class Members:
    """Starts ``python -m scoring_service stream-score`` members against one rig."""

    rig: StreamRig
    model_root: Path
    logs: Path

    def start(self, name: str, *extra: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "SCORING_FEATURE_REPO": str(self.rig.repo),
            "SCORING_FEATURE_STORE_YAML": str(self.rig.yaml),
            "SCORING_MODEL_ROOT": str(self.model_root),
            "SCORING_MODEL_NAME": "fraud_model",
            "SCORING_MODEL_VERSION": "v1",
            "SCORING_STORE_TIMEOUT_MS": "2000",
            "FEAST_USAGE": "False",
            "PYTHONUNBUFFERED": "1",
        }
        with (self.logs / f"{name}.log").open("ab") as log:
            return self._start(name, env, log, extra)

    def _start(self, name: str, env: dict, log: IO[bytes], extra: tuple[str, ...]):
        return processes.start(
            [
                sys.executable,
                "-m",
                "scoring_service",
                "stream-score",
                "--stream",
                STREAM,
                "--decisions",
                DECISIONS,
                "--redis",
                self.rig.server.connection_string,
                "--group",
                GROUP,
                "--consumer",
                name,
                "--windows",
                WINDOWS,
                "--state-prefix",
                STATE_PREFIX,
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4_000:] for p in self.logs.glob("*.log"))


@pytest.fixture()
def members(stream_rig: StreamRig, model_root: Path, tmp_path: Path) -> Iterator[Members]:
    stream_rig.reset()
    yield Members(stream_rig, model_root, tmp_path)


def produce(client: redis.Redis, events: list, chunk: int = 250, pause_s: float = 0.02):
    """Append the events in chunks on a thread of its own, as a live producer would."""

    def run() -> None:
        for start in range(0, len(events), chunk):
            append_events(client, events[start : start + chunk], STREAM)
            time.sleep(pause_s)

    thread = threading.Thread(target=run, name="producer", daemon=True)
    thread.start()
    return thread


def decisions_by_id(client: redis.Redis) -> Counter[str]:
    """How many decisions the output stream holds per business id."""
    counts: Counter[str] = Counter()
    last = "-"
    while True:
        entries = client.xrange(DECISIONS, min=last, count=10_000)
        if last != "-":
            entries = entries[1:]
        if not entries:
            return counts
        counts.update(fields[b"id"].decode() for _, fields in entries)
        last = entries[-1][0].decode()
