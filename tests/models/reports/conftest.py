"""Fixtures of the report tests: planted labelled rows of the toy model's inputs, and a small
LightGBM model fitted on them (seconds, no feature store)."""

from __future__ import annotations

from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from tests.models.package_helpers import FEATURES

START = datetime(2026, 3, 1, tzinfo=UTC)
N_ROWS = 3_000


@pytest.fixture(scope="session")
def labelled_rows() -> pd.DataFrame:
    """Transactions with the toy model's inputs, a fraud label and an event time every minute;
    fraud is planted on many card payments of high amounts."""
    rng = np.random.default_rng(21)
    count = rng.poisson(2.0, N_ROWS).astype(np.float64)
    mean = rng.gamma(2.0, 30.0, N_ROWS)
    mean[rng.random(N_ROWS) < 0.1] = np.nan  # cards without a 30-day history
    amount = rng.gamma(1.5, 40.0, N_ROWS)
    risk = 0.02 + 0.5 * (count >= 4) * (amount > 80)
    return pd.DataFrame(
        {
            "transaction_id": [f"tx_{i:05d}" for i in range(N_ROWS)],
            "event_timestamp": pd.date_range(START, periods=N_ROWS, freq="min", tz="UTC"),
            "card_txn_count_24h": count,
            "card_amount_mean_30d": mean,
            "amount": amount,
            "is_fraud": (rng.random(N_ROWS) < risk).astype(np.int32),
        }
    )


@pytest.fixture(scope="session")
def booster(labelled_rows: pd.DataFrame) -> lgb.Booster:
    """A small binary LightGBM model on the toy inputs, named as the manifest names them."""
    data = lgb.Dataset(
        labelled_rows[FEATURES].to_numpy(np.float64),
        labelled_rows["is_fraud"].to_numpy(),
        feature_name=FEATURES,
    )
    params = {"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": 3}
    return lgb.train(params, data, num_boost_round=20)
