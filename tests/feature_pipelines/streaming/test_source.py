"""The Redis Streams source: at least once, each pending event handed out once on restart."""

from __future__ import annotations

import pytest

from feature_pipelines.fraud.events import TransactionEvent
from feature_pipelines.streaming.source import append_events
from tests.conftest import StreamRig
from tests.feature_pipelines.streaming.helpers import STREAM, source

pytestmark = pytest.mark.redis


def test_a_restarted_consumer_gets_each_pending_event_once(stream_rig: StreamRig) -> None:
    rig = stream_rig
    rig.reset()
    events = [
        TransactionEvent(f"tx_{i}", 1_800_000_000_000_000 + i, 1.0, "203.0.113.1", "c_1", "m_1")
        for i in range(5)
    ]
    ids = append_events(rig.client, events, stream=STREAM)
    delivered = source(rig).read(5, 10)
    assert [m.message_id for m in delivered] == ids  # delivered, never acknowledged
    restarted = source(rig)
    again = [m.message_id for _ in range(3) for m in restarted.read(2, 10)]
    assert again == ids  # in order, once each, though none was acknowledged
    assert restarted.read(2, 10) == []


def test_an_entry_the_decoder_refuses_comes_with_its_error(stream_rig: StreamRig) -> None:
    rig = stream_rig
    rig.reset()
    rig.client.xadd(STREAM, {"transaction_id": "tx_bad", "amount": "lots"})
    (message,) = source(rig).read(5, 10)
    assert message.event is None
    assert message.error is not None and "lacks" in message.error
    assert message.raw == {"transaction_id": "tx_bad", "amount": "lots"}
