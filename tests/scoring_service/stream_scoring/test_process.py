"""A stream-scoring member as a process: it applies the service's garbage-collector policy.

Without it, a full collection walked the start-up heap (Feast, protobuf, pandas, ONNX Runtime's
bindings) every few seconds and every event arriving meanwhile waited 100-250 ms for its decision
(``bench/stream.py``'s half-rate row). ``scoring_service/core/process.py`` holds the policy and its
own checks; this one checks that a member settles its heap once it is open, before it reads.
"""

from __future__ import annotations

import re
import subprocess

import pandas as pd
import pytest

from feature_pipelines.streaming.source import append_events
from tests.fixtures import processes
from tests.scoring_service.stream_scoring.conftest import (
    DECISIONS,
    STREAM,
    Members,
    decisions_by_id,
    payment_events,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

EVENTS = 50
WAIT_S = 240.0  # a start-up on a busy machine


def test_a_member_settles_its_heap_before_it_reads_the_stream(
    members: Members, transactions: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCORING_GC_FREEZE", "true")
    monkeypatch.setenv("SCORING_GC_THRESHOLDS", "[12345,11,12]")
    client = members.rig.client
    events = payment_events(transactions, EVENTS)
    append_events(client, events, STREAM)
    member = members.start("scorer-gc", "--max-events", str(EVENTS))
    try:
        code = member.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the member did not stop after {EVENTS} events\n{members.log_text()}")
    finally:
        processes.stop(member)
    assert code == 0, members.log_text()
    log = (members.logs / "scorer-gc.log").read_text(errors="replace")
    settled = re.search(r"(\d+) start-up objects frozen, thresholds \(12345, 11, 12\)", log)
    assert settled is not None, log[-4_000:]
    assert int(settled.group(1)) > 0
    reading = log.find(f"scoring {STREAM} as")
    assert 0 <= settled.start() < reading, "the heap was settled after the member began reading"
    assert set(decisions_by_id(client)) == {e.transaction_id for e in events}
    assert client.xlen(DECISIONS) == EVENTS
