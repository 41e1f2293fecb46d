"""Window state in Redis: idempotent under redelivery, and one function names its keys."""

from __future__ import annotations

import pandas as pd
import pytest

from feature_pipelines.fraud.events import events_from_frame
from feature_pipelines.fraud.windows import CATALOGUE
from feature_pipelines.streaming.state import WindowState, state_key
from tests.conftest import StreamRig
from tests.feature_pipelines.streaming.helpers import state


@pytest.mark.redis
def test_applying_a_batch_twice_changes_nothing(stream_rig: StreamRig, history) -> None:
    rig = stream_rig
    rig.reset()
    window_state = state(rig)
    events = events_from_frame(history.tail(300))
    first = window_state.apply(events)
    members = {c: window_state.members("card", c) for c in {e.card_id for e in events}}
    second = window_state.apply(events)
    for table in CATALOGUE.tables:
        pd.testing.assert_frame_equal(first[table], second[table])
    assert members == {c: window_state.members("card", c) for c in members}


@pytest.mark.redis
def test_every_key_is_named_by_state_key(stream_rig: StreamRig, history) -> None:
    rig = stream_rig
    rig.reset()
    events = events_from_frame(history.tail(50))
    state(rig).add(events)
    expected = {
        state_key("fraud:rt", kind.name, getattr(e, kind.join_key))
        for kind in CATALOGUE.kinds
        for e in events
    }
    assert {k.decode() for k in rig.client.keys("fraud:rt:*")} == expected


def test_retention_must_cover_the_longest_window() -> None:
    with pytest.raises(ValueError, match="longest window"):
        WindowState(None, CATALOGUE, prefix="p", retention_us=CATALOGUE.max_window_us - 1)  # type: ignore[arg-type]
