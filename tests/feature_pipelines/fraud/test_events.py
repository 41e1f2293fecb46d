"""Transaction events: what travels on the stream decodes to the same event, or is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_pipelines.fraud.events import TransactionEvent, events_from_frame
from feature_pipelines.streaming.source import InvalidEvent


def test_event_fields_round_trip() -> None:
    event = TransactionEvent(
        "tx_1", 1_800_000_000_123_456, 0.1 + 0.2, "2001:db8::1", "card_1", "m_1", "US", None
    )
    assert TransactionEvent.from_fields(event.to_fields()) == event
    assert np.isclose(event.event_time.timestamp(), 1_800_000_000.123456)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"amount": None}, "lacks"),
        ({"amount": "lots"}, "malformed"),
        ({"amount": "-1"}, "not negative"),
        ({"amount": "nan"}, "finite"),
        ({"card_id": "c|1"}, "must not contain"),
    ],
)
def test_malformed_entries_are_refused(change: dict, message: str) -> None:
    fields = TransactionEvent("tx_1", 1, 2.5, "203.0.113.1", "c_1", "m_1").to_fields()
    fields = {k: v for k, v in {**fields, **change}.items() if v is not None}
    with pytest.raises(InvalidEvent, match=message):
        TransactionEvent.from_fields(fields)


def test_events_from_frame_keep_the_frame_order_and_microseconds() -> None:
    frame = pd.DataFrame(
        {
            "transaction_id": ["b", "a"],
            "event_timestamp": pd.to_datetime(
                ["2026-01-01 00:00:01.000002", "2026-01-01 00:00:00.000000"], utc=True
            ),
            "amount": [1.5, 2.0],
            "ip_address": ["203.0.113.1", "203.0.113.2"],
            "card_id": ["c1", "c2"],
            "merchant_id": ["m1", "m2"],
            "currency": ["USD", None],
        }
    )
    first, second = events_from_frame(frame)
    assert (first.transaction_id, second.transaction_id) == ("b", "a")
    assert first.event_time_us - second.event_time_us == 1_000_002
    assert (first.currency, second.currency, first.card_country) == ("USD", None, None)
