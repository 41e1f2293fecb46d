"""Helpers of the streaming tests: the fraud catalogue run against a real rig, and row views."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from feast import FeatureStore

from feature_pipelines.fraud.events import TransactionEvent
from feature_pipelines.fraud.windows import CATALOGUE, STATE_PREFIX
from feature_pipelines.streaming.consumer import FeastPushWriter, StreamConsumer
from feature_pipelines.streaming.source import RedisStreamSource
from feature_pipelines.streaming.state import WindowState
from tests.conftest import StreamRig

STREAM = "test:transactions"
GROUP = "stream-features"


def source(rig: StreamRig, consumer_name: str = "consumer-1") -> RedisStreamSource:
    """The test stream, read as the CLI reads it."""
    return RedisStreamSource(
        rig.client, STREAM, GROUP, consumer_name, decode=TransactionEvent.from_fields
    )


def state(rig: StreamRig) -> WindowState:
    """The fraud window state on the rig's Redis."""
    return WindowState(rig.client, CATALOGUE, prefix=STATE_PREFIX)


def consumer(rig: StreamRig, store: FeatureStore, **kwargs: Any) -> StreamConsumer:
    """A consumer as the CLI builds it (consumer name consumer-1, so a restart resumes)."""
    return StreamConsumer(source(rig), state(rig), FeastPushWriter(store, CATALOGUE), **kwargs)


def offline_rows(rig: StreamRig) -> dict[str, pd.DataFrame]:
    """Offline stream rows, duplicates (redelivered events) dropped, in a stable order."""
    out = {}
    for table, kind in CATALOGUE.tables.items():
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


def snapshot(rig: StreamRig, history: pd.DataFrame) -> dict[str, object]:
    """Window state, online values and offline rows of every entity in ``history``."""
    window_state = state(rig)
    out: dict[str, object] = {"offline": offline_rows(rig)}
    store = rig.store()
    for kind in CATALOGUE.kinds:
        keys = sorted(history[kind.join_key].unique())
        out[f"state_{kind.name}"] = {k: window_state.members(kind.name, k) for k in keys}
        online = store.get_online_features(
            features=[f"{kind.view}:{f}" for f in kind.feature_names],
            entity_rows=[{kind.join_key: k} for k in keys],
        ).to_dict()
        out[f"online_{kind.name}"] = {f: online[f] for f in kind.feature_names}
    return out


def assert_same(clean: dict[str, object], recovered: dict[str, object]) -> None:
    """Two snapshots hold the same state, online values and offline rows."""
    for name, value in clean.items():
        if name == "offline":
            for table, frame in value.items():  # type: ignore[attr-defined]
                pd.testing.assert_frame_equal(recovered["offline"][table], frame)  # type: ignore[index]
        else:
            assert recovered[name] == value, name
