"""Replay: the offline rows of a history, as a point-in-time join reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from feature_pipelines.fraud.windows import CATALOGUE
from feature_pipelines.streaming.replay import (
    empty_stream_tables,
    stream_tables,
    write_stream_tables,
)
from tests.conftest import StreamRig
from tests.feature_pipelines.streaming.helpers import burst

pytestmark = pytest.mark.clock


@pytest.mark.redis
def test_point_in_time_join_never_sees_the_transaction_itself(stream_rig: StreamRig) -> None:
    rig = stream_rig
    rig.reset()
    t0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    times = [t0, t0 + timedelta(minutes=1), t0 + timedelta(minutes=2), t0 + timedelta(minutes=2)]
    events = burst("card_pit", "203.0.113.9", t0, 4, timedelta(0))
    events["event_timestamp"] = pd.to_datetime(times, utc=True)
    write_stream_tables(CATALOGUE, stream_tables(CATALOGUE, events), rig.repo / "data")
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


def test_empty_tables_have_string_join_keys_and_every_feature() -> None:
    tables = empty_stream_tables(CATALOGUE)
    assert set(tables) == set(CATALOGUE.tables)
    for table, kind in CATALOGUE.tables.items():
        frame = tables[table]
        assert frame.empty
        assert str(frame[kind.join_key].dtype) == "string"
        assert list(frame.columns) == [
            kind.join_key,
            "event_timestamp",
            "created_timestamp",
            *kind.feature_names,
        ]


def test_only_the_tables_given_are_written(tmp_path) -> None:
    tables = empty_stream_tables(CATALOGUE)
    written = write_stream_tables(CATALOGUE, {"card_stream": tables["card_stream"]}, tmp_path)
    assert [p.name for p in written] == [CATALOGUE.kind("card").table_file]
