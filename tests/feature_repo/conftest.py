"""Fixtures of the feature repository's tests: the fraud repository over planted snapshots.

A copy of ``feature_repo/fraud`` applied with the plain Feast CLI over a handful of hand-made
rows (fresh and stale per view, a row on each side of a point-in-time boundary), so tests read
exact values back through the registry and the offline store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from feature_pipelines.fraud import schema
from feature_pipelines.fraud.windows import CATALOGUE
from feature_pipelines.streaming.replay import empty_stream_tables
from tests.conftest import copy_repo, feast_cli

#: The instant the planted entity rows are scored at.
T = pd.Timestamp("2024-06-01 12:00", tz="UTC")
HOUR = pd.Timedelta(hours=1)
DAY = pd.Timedelta(days=1)


def table(
    key: str,
    features: list[str],
    rows: list[tuple[str, pd.Timestamp, dict[str, Any]]],
    dtype: Callable[[str], str] = schema.feature_dtype,
) -> pd.DataFrame:
    """A feature table in the pipelines' layout; features not given are 0."""
    records = [
        {
            key: entity,
            schema.EVENT_TIMESTAMP: at,
            schema.CREATED_TIMESTAMP: at,
            **{name: values.get(name, 0) for name in features},
        }
        for entity, at, values in rows
    ]
    frame = pd.DataFrame.from_records(records)
    return frame.astype({name: dtype(name) for name in features})


def planted_tables() -> dict[str, pd.DataFrame]:
    """Per view: an entity just inside its TTL at ``T``, one just outside; card_pit has
    snapshots before, at and after ``T``."""
    ip = table(
        schema.IP_JOIN_KEY,
        schema.IP_FEATURES,
        [
            ("198.51.100.10", T - 13 * DAY, {"ip_txn_count_7d": 13, "ip_amount_mean_7d": 40.0}),
            ("198.51.100.11", T - 15 * DAY, {"ip_txn_count_7d": 15, "ip_amount_mean_7d": 1.0}),
        ],
    )
    card = table(
        schema.CARD_JOIN_KEY,
        schema.CARD_FEATURES,
        [
            (
                "card_fresh",
                T - 29 * DAY,
                {"card_txn_count_7d": 29, "card_amount_mean_30d": 50.0, "card_amount_max_30d": 200},
            ),
            ("card_stale", T - 31 * DAY, {"card_txn_count_7d": 31, "card_amount_mean_30d": 1.0}),
            ("card_pit", T - 2 * HOUR, {"card_txn_count_7d": 5}),
            ("card_pit", T, {"card_txn_count_7d": 7}),
            ("card_pit", T + HOUR, {"card_txn_count_7d": 9}),
        ],
    )
    merchant = table(
        schema.MERCHANT_JOIN_KEY,
        schema.MERCHANT_FEATURES,
        [
            ("m_fresh", T - 6 * DAY, {"merchant_txn_count_7d": 6}),
            ("m_stale", T - 8 * DAY, {"merchant_txn_count_7d": 8}),
        ],
    )
    stream = empty_stream_tables(CATALOGUE)
    card_kind = CATALOGUE.kind("card")
    sums = {f.name for f in card_kind.features if f.aggregate == "sum"}
    card_stream = table(
        card_kind.join_key,
        card_kind.feature_names,
        [
            (
                "card_fresh",
                T - 10 * pd.Timedelta(minutes=1),
                {"card_rt_amount_sum_1h": 30.0, "card_rt_txn_count_1h": 3},
            ),
            ("card_stale", T - 61 * pd.Timedelta(minutes=1), {"card_rt_txn_count_1h": 1}),
        ],
        dtype=lambda name: "float64" if name in sums else "int64",
    )
    stream[card_kind.table] = card_stream
    return {"ip": ip, "card": card, "merchant": merchant, **stream}


@pytest.fixture(scope="package")
def planted_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fraud repository over ``planted_tables``, applied with ``feast apply``."""
    repo = copy_repo(tmp_path_factory.mktemp("planted") / "feature_repo", planted_tables())
    feast_cli(repo, "apply")
    return repo
