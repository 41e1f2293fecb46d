"""Fixtures of the streaming tests: a recent history with planted bursts."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from tests.feature_pipelines.streaming.helpers import burst


@pytest.fixture(scope="session")
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
