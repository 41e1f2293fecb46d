"""Stream scoring as real processes: kill -9 at random moments loses and doubles no decision.

Members of one consumer group run ``python -m scoring_service stream-score`` against a real
redis-server and Feast repository (the stream rig) with a real model package; the test counts
the output stream's decisions by business id. ``STREAM_CHAOS_EVENTS`` sets how many events flow
(``make stream-chaos`` runs 100,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from collections import deque

import httpx
import pandas as pd
import pytest
import redis
import redis.asyncio as aioredis

from feature_pipelines.streaming.source import append_events
from scoring_service.stream_scoring.decisions import Decision, DecisionWriter
from scoring_service.stream_scoring.runner import Entry, take
from tests.conftest import free_port
from tests.fixtures import processes
from tests.fixtures.service import FRAUD_API
from tests.scoring_service.stream_scoring.conftest import (
    DECISIONS,
    GROUP,
    STREAM,
    Members,
    decisions_by_id,
    payment_events,
    produce,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

EVENTS = int(os.environ.get("STREAM_CHAOS_EVENTS", "4000"))
WAIT_S = 240.0 + EVENTS / 100  # start-ups on a busy machine, then the flow at >= 100/s


def _wait_for(members: Members, count: int, alive: list[subprocess.Popen], what: str) -> None:
    """Until the output stream holds ``count`` decisions; fails when every member has died."""
    client = members.rig.client
    deadline = time.monotonic() + WAIT_S
    while client.xlen(DECISIONS) < count:
        if all(p.poll() is not None for p in alive) or time.monotonic() > deadline:
            pytest.fail(
                f"{what}: {client.xlen(DECISIONS)} of {count} decisions\n{members.log_text()}"
            )
        time.sleep(0.01)


def _assert_exactly_once(client: redis.Redis, ids: set[str]) -> None:
    counts = decisions_by_id(client)
    doubled = {k: n for k, n in counts.items() if n > 1}
    assert not doubled, f"{len(doubled)} events decided more than once, e.g. {list(doubled)[:5]}"
    assert set(counts) == ids, f"{len(ids - set(counts))} events without a decision"
    assert client.xpending(STREAM, GROUP)["pending"] == 0


PLANTED = b'{"planted": true}'


def _plant_decided_but_unacknowledged(client: redis.Redis, events: list, member: str) -> list[str]:
    """Append ``events``, deliver them to ``member``, write decisions for half of them and
    acknowledge none: a member that died between its decisions and its XACK."""
    append_events(client, events, STREAM)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    client.xreadgroup(GROUP, member, {STREAM: ">"}, count=len(events))
    planted = [e.transaction_id for e in events[: len(events) // 2]]

    async def plant() -> None:
        async with aioredis.Redis(port=client.connection_pool.connection_kwargs["port"]) as conn:
            writer = DecisionWriter(conn, DECISIONS)
            await writer.write([Decision(key, "0-1", PLANTED) for key in planted])

    asyncio.run(plant())
    return planted


def _kill_points(rng: random.Random, n: int, k: int) -> list[int]:
    return sorted(rng.sample(range(n // 10, 9 * n // 10), k))


def test_kill_9_three_times_then_restart_every_event_decided_once(
    members: Members, transactions: pd.DataFrame
) -> None:
    client = members.rig.client
    events = payment_events(transactions, EVENTS)
    ids = {e.transaction_id for e in events}
    seed = random.randrange(1 << 30)
    points = _kill_points(random.Random(seed), EVENTS, 3)
    planted = _plant_decided_but_unacknowledged(client, events[:200], "scorer-1")
    producer = produce(client, events[200:])
    options = ("--batch-size", "64", "--claim-idle-seconds", "5")
    for point in points:
        member = members.start("scorer-1", *options)
        _wait_for(members, point, [member], f"before the kill at {point} (seed {seed})")
        processes.stop(member, signal.SIGKILL)
        pending = client.xpending(STREAM, GROUP)["pending"]
        decided = client.xlen(DECISIONS)
        assert pending + (EVENTS - decided) > 0, "killed after the last event: nothing to recover"
    # Restarted under the same name: its pending entries come back first.
    member = members.start("scorer-1", *options)
    try:
        _wait_for(members, len(ids), [member], f"after the kills at {points} (seed {seed})")
        producer.join()
        time.sleep(0.5)  # let a wrongly repeated decision land before counting
    finally:
        assert processes.stop(member) == 0, members.log_text()
    _assert_exactly_once(client, ids)
    # Decided, never acknowledged (a crash between the two): redelivered, not decided again.
    kept = {
        fields[b"id"].decode(): fields[b"answer"]
        for _, fields in client.xrange(DECISIONS, count=len(planted))
    }
    assert kept == {key: PLANTED for key in planted}
    # A decision reads like the API's answer for one transaction.
    (_, fields), *_ = client.xrevrange(DECISIONS, count=1)
    answer = json.loads(fields[b"answer"])
    assert set(FRAUD_API.result.model_fields) <= set(answer)
    assert answer["label"] in FRAUD_API.labels
    assert answer["transaction_id"] == fields[b"id"].decode()


def test_two_members_one_killed_the_other_takes_over_its_pending_events(
    members: Members, transactions: pd.DataFrame
) -> None:
    client = members.rig.client
    events = payment_events(transactions, EVENTS)
    ids = {e.transaction_id for e in events}
    seed = random.randrange(1 << 30)
    (point,) = _kill_points(random.Random(seed), EVENTS, 1)
    # Room for three batches in hand: reads pause whenever the member lags.
    options = ("--batch-size", "64", "--max-in-flight", "192", "--claim-idle-seconds", "2")
    port = free_port()
    first = members.start("scorer-a", *options)
    second = members.start("scorer-b", *options, "--metrics-port", str(port))
    try:
        producer = produce(client, events)
        _wait_for(members, point, [first, second], f"before the kill at {point} (seed {seed})")
        processes.stop(first, signal.SIGKILL)
        _wait_for(members, len(ids), [second], f"after the kill at {point} (seed {seed})")
        producer.join()
        time.sleep(1.5)  # a wrongly repeated decision lands; the lag gauge is refreshed
        metrics = _samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text)
    finally:
        processes.stop(first, signal.SIGKILL)
        assert processes.stop(second) == 0, members.log_text()
    _assert_exactly_once(client, ids)
    # The survivor's metrics: what it decided and took over, the group drained.
    where = {"stream": STREAM}
    assert metrics[("stream_scoring_events_total", _key(where, outcome="decided"))] > 0
    assert metrics[("stream_scoring_claimed_total", _key(where))] > 0
    assert metrics[("stream_scoring_read_pauses_total", _key(where))] > 0
    assert metrics[("stream_scoring_in_flight_entries", _key(where))] == 0
    assert metrics[("stream_scoring_lag_entries", _key(where, group=GROUP))] == 0
    assert metrics[("stream_scoring_event_to_decision_seconds_count", _key(where))] > 0


def test_take_joins_the_reads_waiting_into_batches_in_read_order() -> None:
    def read(first: int, n: int) -> list[Entry]:
        return [(f"{i}-0", {"n": str(i)}) for i in range(first, first + n)]

    # A steady flow read in pieces (one entry woke the blocked read, then the rest of an append).
    pending = deque([read(0, 1), read(1, 69), read(70, 69), read(139, 69), read(208, 200)])
    first = take(pending, 256)
    assert [entry_id for entry_id, _ in first] == [f"{i}-0" for i in range(256)]
    assert [len(r) for r in pending] == [152]  # the split read's rest is next in line
    second = take(pending, 256)
    assert [entry_id for entry_id, _ in second] == [f"{i}-0" for i in range(256, 408)]
    assert not pending
    assert take(pending, 256) == []


def _key(labels: dict[str, str], **more: str) -> frozenset[tuple[str, str]]:
    return frozenset({**labels, **more}.items())


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(name, labels) -> value, from a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        pairs = [p.split("=", 1) for p in labels.rstrip("}").split(",") if "=" in p]
        out[(name, frozenset((k, v.strip('"')) for k, v in pairs))] = float(value)
    return out
