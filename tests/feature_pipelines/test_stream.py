"""Streaming features: window values, point-in-time stamps, idempotent consumption, recovery.

Everything runs against real redis-server processes and a real Feast repository; the consumer
is killed with SIGKILL as a subprocess, and a crash is also injected between write and ack.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from feature_pipelines.stream import (
    KINDS,
    STREAM_TABLES,
    FeastPushWriter,
    StreamConsumer,
    WindowState,
    stream_tables,
    to_cents,
    write_stream_tables,
)
from feature_pipelines.stream_source import (
    RedisStreamSource,
    TransactionEvent,
    append_events,
    events_from_frame,
)
from tests.conftest import StreamRig

pytestmark = pytest.mark.redis

STREAM = "test:transactions"
GROUP = "stream-features"


def consumer(rig: StreamRig, store: FeatureStore, **kwargs) -> StreamConsumer:
    """A consumer as the CLI builds it (consumer name consumer-1, so a restart resumes)."""
    source = RedisStreamSource(rig.client, STREAM, GROUP, "consumer-1")
    return StreamConsumer(source, WindowState(rig.client), FeastPushWriter(store), **kwargs)


def offline_rows(rig: StreamRig) -> dict[str, pd.DataFrame]:
    """Offline stream rows, duplicates (redelivered events) dropped, in a stable order."""
    out = {}
    for table, kind in STREAM_TABLES.items():
        frame = pd.read_parquet(rig.repo / "data" / kind.table_file)
        out[table] = canonical(frame, kind.join_key)
    return out


def canonical(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The rows a point-in-time join can return: per entity and event millisecond, the latest
    stamp (a tie split over batches leaves an earlier partial row no transaction can see)."""
    frame = frame.copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame["created_timestamp"] = pd.to_datetime(frame["created_timestamp"], utc=True)
    frame["event_ms"] = frame["event_timestamp"].dt.floor("ms")
    frame = frame.sort_values([key, "event_timestamp"]).drop_duplicates(
        [key, "event_ms"], keep="last"
    )
    return frame.drop(columns="event_ms").reset_index(drop=True)


def burst(card: str, ip: str, start: datetime, n: int, every: timedelta) -> pd.DataFrame:
    """n small payments of one card, mostly from one IP, a few from others."""
    return pd.DataFrame(
        {
            "transaction_id": [f"burst_{card}_{i:03d}" for i in range(n)],
            "event_timestamp": pd.to_datetime([start + i * every for i in range(n)], utc=True),
            "amount": [1.0 + (i % 7) * 0.37 for i in range(n)],
            "ip_address": [ip if i % 5 else f"198.51.100.{i}" for i in range(n)],
            "card_id": [card] * n,
            "merchant_id": ["m_00001"] * n,
            "card_country": ["US"] * n,
            "ip_country": ["RO"] * n,
            "merchant_country": ["US"] * n,
            "currency": ["USD"] * n,
        }
    )


@pytest.fixture(scope="module")
def history(transactions: pd.DataFrame) -> pd.DataFrame:
    """The latest 800 generated transactions plus two planted bursts, in event-time order."""
    recent = transactions.tail(800)
    end = recent["event_timestamp"].max().to_pydatetime()
    planted = pd.concat(
        [
            burst(
                "card_burst_a",
                "203.0.113.50",
                end - timedelta(minutes=40),
                30,
                timedelta(seconds=40),
            ),
            # Same instant for pairs of events: ties must not see each other.
            burst("card_burst_b", "203.0.113.51", end - timedelta(minutes=30), 12, timedelta(0)),
        ]
    )
    frame = pd.concat([recent, planted], ignore_index=True)
    return frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def test_windows_match_a_brute_force_count(history: pd.DataFrame) -> None:
    tables = stream_tables(history)
    t_us = history["event_timestamp"].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    for table, kind in STREAM_TABLES.items():
        rows = tables[table]
        busiest = history[kind.join_key].value_counts().index[:4]
        for entity in busiest:
            mine = history[kind.join_key] == entity
            for _, row in rows[rows[kind.join_key] == entity].iterrows():
                asof = pd.Timestamp(row["event_timestamp"]).value // 1000 - 1
                for feature in kind.features:
                    inside = mine & (t_us > asof - feature.window_us) & (t_us <= asof)
                    cents = to_cents(history.loc[inside, "amount"].to_numpy())
                    expected = {
                        "count": int(inside.sum()),
                        "sum": cents.sum() / 100.0,
                        "small_count": int((cents < 500).sum()),
                        "distinct": history.loc[inside, kind.counterpart].nunique(),
                    }[feature.aggregate]
                    assert row[feature.name] == expected, (entity, feature.name)


def test_row_counts_its_event_and_is_stamped_one_microsecond_later(history) -> None:
    rows = stream_tables(history)["card_stream"]
    card = rows[rows["card_id"] == "card_burst_a"].reset_index(drop=True)
    first = history[history["card_id"] == "card_burst_a"]["event_timestamp"].min()
    assert card.loc[0, "event_timestamp"] == first + pd.Timedelta(microseconds=1)
    assert card.loc[0, "card_rt_txn_count_5m"] == 1  # the event itself
    assert card["card_rt_txn_count_1h"].tolist() == list(range(1, 31))
    # Twelve events at one instant: one row, counting all of them.
    tied = rows[rows["card_id"] == "card_burst_b"]
    assert len(tied) == 1 and tied["card_rt_txn_count_5m"].item() == 12
    instant = history[history["card_id"] == "card_burst_b"]["event_timestamp"].iloc[0]
    assert tied["event_timestamp"].item() == instant + pd.Timedelta(microseconds=12)


def test_point_in_time_join_never_sees_the_transaction_itself(stream_rig: StreamRig) -> None:
    rig = stream_rig
    rig.reset()
    t0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    times = [t0, t0 + timedelta(minutes=1), t0 + timedelta(minutes=2), t0 + timedelta(minutes=2)]
    events = burst("card_pit", "203.0.113.9", t0, 4, timedelta(0))
    events["event_timestamp"] = pd.to_datetime(times, utc=True)
    write_stream_tables(stream_tables(events), rig.repo / "data")
    asked = [*times, t0 + timedelta(minutes=61), t0 + timedelta(minutes=63)]
    entity_df = pd.DataFrame(
        {"card_id": "card_pit", "event_timestamp": pd.to_datetime(asked, utc=True)}
    )
    frame = (
        rig.store()
        .get_historical_features(
            entity_df=entity_df,
            features=["card_stream_features:card_rt_txn_count_5m"],
        )
        .to_df()
        .sort_values("event_timestamp", kind="stable")
    )
    seen = [None if pd.isna(v) else int(v) for v in frame["card_rt_txn_count_5m"]]
    # Each transaction sees the events strictly before it: the two at t0+2m see neither
    # themselves nor each other. The last row (4 events) stays usable for the view's TTL of one
    # hour after its event, then is withheld.
    assert seen == [None, 1, 2, 2, 4, None]


def test_live_consumer_writes_exactly_what_replay_computes(stream_rig: StreamRig, history) -> None:
    rig = stream_rig
    rig.reset()
    store = rig.store()
    append_events(rig.client, events_from_frame(history), stream=STREAM)
    stats = consumer(rig, store, batch_size=200, offline_flush_seconds=0).run(idle_exit_seconds=0.3)
    assert stats.events == len(history)
    expected = stream_tables(history)
    written = offline_rows(rig)
    for table, kind in STREAM_TABLES.items():
        pd.testing.assert_frame_equal(
            written[table], canonical(expected[table], kind.join_key), check_dtype=False
        )
    # Online: the newest row of each entity.
    latest = expected["card_stream"].drop_duplicates("card_id", keep="last").set_index("card_id")
    cards = ["card_burst_a", "card_burst_b", history["card_id"].iloc[-1]]
    online = store.get_online_features(
        features=[f"card_stream_features:{f}" for f in KINDS["card"].feature_names],
        entity_rows=[{"card_id": c} for c in cards],
    ).to_dict()
    for i, card in enumerate(cards):
        for name in KINDS["card"].feature_names:
            assert online[name][i] == latest.loc[card, name], (card, name)
    assert rig.client.xpending(STREAM, GROUP)["pending"] == 0


def test_applying_a_batch_twice_changes_nothing(stream_rig: StreamRig, history) -> None:
    rig = stream_rig
    rig.reset()
    state = WindowState(rig.client)
    events = events_from_frame(history.tail(300))
    first = state.apply(events)
    members = {c: state.members("card", c) for c in {e.card_id for e in events}}
    second = state.apply(events)
    for table in STREAM_TABLES:
        pd.testing.assert_frame_equal(first[table], second[table])
    assert members == {c: state.members("card", c) for c in members}


def snapshot(rig: StreamRig, history: pd.DataFrame) -> dict[str, object]:
    """Window state, online values and offline rows of every entity in ``history``."""
    state = WindowState(rig.client)
    out: dict[str, object] = {"offline": offline_rows(rig)}
    store = rig.store()
    for kind in KINDS.values():
        keys = sorted(history[kind.join_key].unique())
        out[f"state_{kind.name}"] = {k: state.members(kind.name, k) for k in keys}
        online = store.get_online_features(
            features=[f"{kind.view}:{f}" for f in kind.feature_names],
            entity_rows=[{kind.join_key: k} for k in keys],
        ).to_dict()
        out[f"online_{kind.name}"] = {f: online[f] for f in kind.feature_names}
    return out


def assert_same(clean: dict[str, object], recovered: dict[str, object]) -> None:
    for name, value in clean.items():
        if name == "offline":
            for table, frame in value.items():  # type: ignore[attr-defined]
                pd.testing.assert_frame_equal(recovered["offline"][table], frame)  # type: ignore[index]
        else:
            assert recovered[name] == value, name


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
    return subprocess.Popen(
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
        if process.poll() is None:
            process.kill()
            process.wait()
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
    assert WindowState(rig.client).members("card", "c_1") == [
        ("tx_ok|1250|203.0.113.1", 1_800_000_000_000_000)
    ]
    assert rig.client.xpending(STREAM, GROUP)["pending"] == 0


def test_event_fields_round_trip() -> None:
    event = TransactionEvent(
        "tx_1", 1_800_000_000_123_456, 0.1 + 0.2, "2001:db8::1", "card_1", "m_1", "US", None
    )
    assert TransactionEvent.from_fields(event.to_fields()) == event
    assert np.isclose(event.event_time.timestamp(), 1_800_000_000.123456)


def test_a_restarted_consumer_gets_each_pending_event_once(stream_rig: StreamRig) -> None:
    rig = stream_rig
    rig.reset()
    events = [
        TransactionEvent(f"tx_{i}", 1_800_000_000_000_000 + i, 1.0, "203.0.113.1", "c_1", "m_1")
        for i in range(5)
    ]
    ids = append_events(rig.client, events, stream=STREAM)
    delivered = RedisStreamSource(rig.client, STREAM, GROUP, "consumer-1").read(5, 10)
    assert [m.message_id for m in delivered] == ids  # delivered, never acknowledged
    restarted = RedisStreamSource(rig.client, STREAM, GROUP, "consumer-1")
    again = [m.message_id for _ in range(3) for m in restarted.read(2, 10)]
    assert again == ids  # in order, once each, though none was acknowledged
    assert restarted.read(2, 10) == []
