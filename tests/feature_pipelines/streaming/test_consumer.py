"""The stream consumer: writes what replay computes, loses and doubles nothing on a crash.

Everything runs against a real redis-server and a real Feast repository; the consumer is
killed with SIGKILL as a subprocess, and a crash is also injected between write and ack.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from feature_pipelines.fraud.events import TransactionEvent, events_from_frame
from feature_pipelines.fraud.windows import CATALOGUE
from feature_pipelines.streaming.replay import stream_tables
from feature_pipelines.streaming.source import append_events
from tests.conftest import StreamRig
from tests.feature_pipelines.streaming.helpers import (
    GROUP,
    STREAM,
    assert_same,
    canonical,
    consumer,
    offline_rows,
    snapshot,
    state,
)
from tests.fixtures import processes

pytestmark = [pytest.mark.clock, pytest.mark.redis]


def test_live_consumer_writes_exactly_what_replay_computes(stream_rig: StreamRig, history) -> None:
    rig = stream_rig
    rig.reset()
    store = rig.store()
    append_events(rig.client, events_from_frame(history), stream=STREAM)
    stats = consumer(rig, store, batch_size=200, offline_flush_seconds=0).run(idle_exit_seconds=0.3)
    assert stats.events == len(history)
    expected = stream_tables(CATALOGUE, history)
    written = offline_rows(rig)
    for table, kind in CATALOGUE.tables.items():
        pd.testing.assert_frame_equal(
            written[table], canonical(expected[table], kind.join_key), check_dtype=False
        )
    # Online: the newest row of each entity.
    latest = expected["card_stream"].drop_duplicates("card_id", keep="last").set_index("card_id")
    cards = ["card_burst_a", "card_burst_b", history["card_id"].iloc[-1]]
    online = store.get_online_features(
        features=[f"card_stream_features:{f}" for f in CATALOGUE.kind("card").feature_names],
        entity_rows=[{"card_id": c} for c in cards],
    ).to_dict()
    for i, card in enumerate(cards):
        for name in CATALOGUE.kind("card").feature_names:
            assert online[name][i] == latest.loc[card, name], (card, name)
    assert rig.client.xpending(STREAM, GROUP)["pending"] == 0


@pytest.fixture(scope="module")
def clean_run(stream_rig: StreamRig, history: pd.DataFrame) -> dict[str, object]:
    """What one uninterrupted consumer leaves behind."""
    rig = stream_rig
    rig.reset()
    append_events(rig.client, events_from_frame(history), stream=STREAM)
    consumer(rig, rig.store(), batch_size=100, offline_flush_seconds=0.05).run(
        idle_exit_seconds=0.3
    )
    return snapshot(rig, history)


class Crash(RuntimeError):
    """Injected between the write and the acknowledgement."""


def test_crash_between_write_and_ack_loses_and_doubles_nothing(
    stream_rig: StreamRig, history, clean_run
) -> None:
    rig = stream_rig
    rig.reset()
    append_events(rig.client, events_from_frame(history), stream=STREAM)
    store = rig.store()
    # 300 events processed and acknowledged by a consumer that stops cleanly...
    consumer(rig, store, batch_size=100, offline_flush_seconds=0.05).run(max_events=300)
    assert rig.client.xpending(STREAM, GROUP)["pending"] == 0
    written: list[int] = []

    def crash(ids: list[str]) -> None:
        written.append(len(ids))
        raise Crash("killed after the write, before the ack")

    # ...then one that writes the next batches (online, then offline) and dies before the ack.
    doomed = consumer(rig, store, batch_size=100, offline_flush_seconds=0.05, after_write=crash)
    with pytest.raises(Crash):
        doomed.run(idle_exit_seconds=0.3)
    pending = rig.client.xpending(STREAM, GROUP)["pending"]
    assert pending >= written[0] > 0  # written, never acknowledged
    recovered = consumer(rig, store, batch_size=100, offline_flush_seconds=0.05)
    recovered.run(idle_exit_seconds=0.3)
    assert rig.client.xpending(STREAM, GROUP)["pending"] == 0
    assert_same(clean_run, snapshot(rig, history))


def _stream_cli(rig: StreamRig) -> subprocess.Popen:
    return processes.start(
        [
            sys.executable,
            "-m",
            "feature_pipelines",
            "stream",
            "--repo",
            str(rig.repo),
            "--yaml",
            str(rig.yaml),
            "--redis",
            rig.server.connection_string,
            "--stream",
            STREAM,
            "--group",
            GROUP,
            "--consumer",
            "consumer-1",
            "--batch-size",
            "100",
            "--offline-flush-seconds",
            "0.2",
        ],
        stop_signal=signal.SIGKILL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_sigkill_mid_stream_then_restart_ends_like_a_clean_run(
    stream_rig: StreamRig, history, clean_run
) -> None:
    rig = stream_rig
    rig.reset()
    append_events(rig.client, events_from_frame(history), stream=STREAM)
    total = len(history)
    process = _stream_cli(rig)
    try:
        deadline = time.monotonic() + 120
        while True:
            groups = rig.client.xinfo_groups(STREAM)
            delivered = groups[0]["entries-read"] if groups else 0
            if delivered and delivered >= total // 3:
                break
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the consumer did not start"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        processes.stop(process)
        if process.stdout is not None:
            process.stdout.close()
    unacked = rig.client.xpending(STREAM, GROUP)["pending"]
    unread = rig.client.xinfo_groups(STREAM)[0]["lag"]
    assert unacked + unread > 0, "killed after the end of the stream: nothing to recover"
    # The restart runs in this process (the CLI's code path, without a second slow start-up):
    # same consumer name, so it gets the killed consumer's pending events first.
    consumer(rig, rig.store(), batch_size=100, offline_flush_seconds=0.2).run(idle_exit_seconds=0.3)
    assert rig.client.xpending(STREAM, GROUP)["pending"] == 0
    assert_same(clean_run, snapshot(rig, history))


def test_malformed_entry_is_dead_lettered_and_the_stream_goes_on(stream_rig: StreamRig) -> None:
    rig = stream_rig
    rig.reset()
    good = TransactionEvent("tx_ok", 1_800_000_000_000_000, 12.5, "203.0.113.1", "c_1", "m_1")
    rig.client.xadd(STREAM, {"transaction_id": "tx_bad", "amount": "lots"})
    append_events(rig.client, [good], stream=STREAM)
    stats = consumer(rig, rig.store(), offline_flush_seconds=0).run(idle_exit_seconds=0.3)
    assert (stats.events, stats.dead_letters) == (1, 1)
    (entry,) = rig.client.xrange(f"{STREAM}:dead")
    assert entry[1][b"transaction_id"] == b"tx_bad"
    assert b"lacks" in entry[1][b"dead_letter_reason"]
    assert state(rig).members("card", "c_1") == [("tx_ok|1250|203.0.113.1", 1_800_000_000_000_000)]
    assert rig.client.xpending(STREAM, GROUP)["pending"] == 0
