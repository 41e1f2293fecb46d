"""Tests of the hourly entity feature snapshots (point-in-time semantics)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feature_pipelines.fraud import schema
from feature_pipelines.fraud.aggregate import aggregate
from feature_pipelines.fraud.generate import generate_transactions

pytestmark = pytest.mark.clock

H = pd.Timestamp("2024-03-10 12:00", tz="UTC")  # an hour boundary the tests look at
HOUR = pd.Timedelta(hours=1)
DAY = pd.Timedelta(days=1)
SECOND = pd.Timedelta(seconds=1)


def make_tx(*rows: dict[str, Any]) -> pd.DataFrame:
    """Transactions frame from partial rows; labels mature 5 days later unless given."""
    defaults: dict[str, Any] = {
        schema.AMOUNT: 10.0,
        schema.IP_ADDRESS: "198.51.100.1",
        schema.CARD_ID: "card_a",
        schema.MERCHANT_ID: "m_a",
        schema.IP_COUNTRY: "US",
        schema.IS_FRAUD: 0,
    }
    records = []
    for row in rows:
        record = {**defaults, **row}
        record.setdefault(schema.LABEL_AVAILABLE_AT, record[schema.EVENT_TIMESTAMP] + 5 * DAY)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    frame[schema.IS_FRAUD] = frame[schema.IS_FRAUD].astype("int8")
    return frame


def snapshot(frames: dict[str, pd.DataFrame], entity: str, key: str, at: pd.Timestamp) -> pd.Series:
    """The single snapshot row of ``key`` at hour ``at``."""
    frame = frames[entity]
    rows = frame[
        (frame[schema.ENTITY_JOIN_KEYS[entity]] == key) & (frame[schema.EVENT_TIMESTAMP] == at)
    ]
    assert len(rows) == 1, f"{entity} {key} has {len(rows)} snapshots at {at}"
    return rows.iloc[0]


def snapshot_times(frames: dict[str, pd.DataFrame], entity: str, key: str) -> list[pd.Timestamp]:
    frame = frames[entity]
    return list(frame.loc[frame[schema.ENTITY_JOIN_KEYS[entity]] == key, schema.EVENT_TIMESTAMP])


def test_event_at_hour_boundary_is_in_next_snapshot_only() -> None:
    frames = aggregate(
        make_tx({schema.EVENT_TIMESTAMP: H - 30 * 60 * SECOND}, {schema.EVENT_TIMESTAMP: H})
    )
    for entity, key in (("card", "card_a"), ("ip", "198.51.100.1"), ("merchant", "m_a")):
        assert snapshot_times(frames, entity, key) == [H, H + HOUR]
    at_h = snapshot(frames, "card", "card_a", H)
    assert at_h["card_txn_count_1h"] == 1
    assert at_h["card_txn_count_24h"] == 1
    next_h = snapshot(frames, "card", "card_a", H + HOUR)
    assert next_h["card_txn_count_1h"] == 1
    assert next_h["card_txn_count_24h"] == 2
    assert snapshot(frames, "ip", "198.51.100.1", H)["ip_txn_count_1h"] == 1
    assert snapshot(frames, "merchant", "m_a", H)["merchant_txn_count_24h"] == 1
    assert snapshot(frames, "merchant", "m_a", H + HOUR)["merchant_txn_count_24h"] == 2


@pytest.mark.parametrize(
    ("entity", "key", "feature", "width"),
    [
        ("card", "card_a", "card_txn_count_1h", HOUR),
        ("card", "card_a", "card_txn_count_24h", DAY),
        ("card", "card_a", "card_txn_count_7d", 7 * DAY),
        ("card", "card_a", "card_small_txn_count_24h", DAY),
        ("ip", "198.51.100.1", "ip_txn_count_1h", HOUR),
        ("ip", "198.51.100.1", "ip_txn_count_24h", DAY),
        ("ip", "198.51.100.1", "ip_txn_count_7d", 7 * DAY),
        ("merchant", "m_a", "merchant_txn_count_24h", DAY),
        ("merchant", "m_a", "merchant_txn_count_7d", 7 * DAY),
    ],
)
def test_window_edges(entity: str, key: str, feature: str, width: pd.Timedelta) -> None:
    """An event at H - width is inside the window, one at H - width - 1s is not."""
    frames = aggregate(
        make_tx(
            {schema.EVENT_TIMESTAMP: H - width - SECOND, schema.AMOUNT: 1.0},
            {schema.EVENT_TIMESTAMP: H - width, schema.AMOUNT: 1.0},
            {schema.EVENT_TIMESTAMP: H - 10 * 60 * SECOND, schema.AMOUNT: 1.0},
        )
    )
    assert snapshot(frames, entity, key, H)[feature] == 2


def test_distinct_counts() -> None:
    near = H - 20 * 60 * SECOND
    frames = aggregate(
        make_tx(
            {schema.EVENT_TIMESTAMP: near, schema.IP_ADDRESS: "x", schema.CARD_ID: "A"},
            {schema.EVENT_TIMESTAMP: near, schema.IP_ADDRESS: "x", schema.CARD_ID: "A"},
            {schema.EVENT_TIMESTAMP: near, schema.IP_ADDRESS: "x", schema.CARD_ID: "B"},
            {schema.EVENT_TIMESTAMP: H - 23 * HOUR, schema.IP_ADDRESS: "x", schema.CARD_ID: "C"},
            {schema.EVENT_TIMESTAMP: H - 25 * HOUR, schema.IP_ADDRESS: "x", schema.CARD_ID: "D"},
            # Card A: IPs x (US), y (GB, twice), z (US) in the last 24h; w (NG) 2 days ago.
            {schema.EVENT_TIMESTAMP: H - 2 * HOUR, schema.IP_ADDRESS: "y", schema.CARD_ID: "A",
             schema.IP_COUNTRY: "GB"},
            {schema.EVENT_TIMESTAMP: H - 3 * HOUR, schema.IP_ADDRESS: "y", schema.CARD_ID: "A",
             schema.IP_COUNTRY: "GB"},
            {schema.EVENT_TIMESTAMP: H - 4 * HOUR, schema.IP_ADDRESS: "z", schema.CARD_ID: "A"},
            {schema.EVENT_TIMESTAMP: H - 2 * DAY, schema.IP_ADDRESS: "w", schema.CARD_ID: "A",
             schema.IP_COUNTRY: "NG"},
        )
    )  # fmt: skip
    ip = snapshot(frames, "ip", "x", H)
    assert ip["ip_distinct_cards_24h"] == 3
    assert ip["ip_txn_count_24h"] == 4
    assert ip["ip_txn_count_7d"] == 5
    card = snapshot(frames, "card", "A", H)
    assert card["card_distinct_ips_24h"] == 3
    assert card["card_distinct_countries_24h"] == 2
    # The 25h-old event for D only counts once the window no longer holds the others.
    assert snapshot(frames, "ip", "x", H - 24 * HOUR)["ip_distinct_cards_24h"] == 1


def test_amount_features() -> None:
    amounts = [10.0, 30.0, 2.0, 4.99, 5.0]
    rows = [
        {schema.EVENT_TIMESTAMP: H - (i + 1) * HOUR, schema.AMOUNT: a}
        for i, a in enumerate(amounts)
    ]
    rows.append({schema.EVENT_TIMESTAMP: H - 30 * DAY - SECOND, schema.AMOUNT: 1000.0})
    rows.append({schema.EVENT_TIMESTAMP: H - 29 * DAY, schema.AMOUNT: 99.0})
    frames = aggregate(make_tx(*rows))
    card = snapshot(frames, "card", "card_a", H)
    month = [*amounts, 99.0]
    assert card["card_amount_mean_30d"] == pytest.approx(sum(month) / len(month))
    assert card["card_amount_max_30d"] == 99.0
    assert card["card_small_txn_count_24h"] == 2
    ip = snapshot(frames, "ip", "198.51.100.1", H)
    assert ip["ip_amount_mean_7d"] == pytest.approx(sum(amounts) / len(amounts))
    merchant = snapshot(frames, "merchant", "m_a", H)
    assert merchant["merchant_amount_mean_7d"] == pytest.approx(sum(amounts) / len(amounts))
    # The 1000.00 event was the maximum while it was inside the window.
    first = snapshot(frames, "card", "card_a", H - 30 * DAY)
    assert first["card_txn_count_7d"] == 1
    assert first["card_amount_max_30d"] == 1000.0
    assert snapshot(frames, "card", "card_a", H - 29 * DAY + HOUR)["card_amount_max_30d"] == 1000.0


def test_empty_windows_give_zero_not_nan() -> None:
    frames = aggregate(make_tx({schema.EVENT_TIMESTAMP: H - 10 * DAY}, {schema.EVENT_TIMESTAMP: H}))
    ip = snapshot(frames, "ip", "198.51.100.1", H + HOUR)
    assert ip["ip_txn_count_7d"] == 1  # the event at H; the other one is 10 days old
    card = snapshot(frames, "card", "card_a", H - 10 * DAY + HOUR)
    assert card["card_txn_count_24h"] == 1
    merchant = snapshot(frames, "merchant", "m_a", H + HOUR)
    assert merchant["merchant_fraud_rate_30d"] == 0.0  # no label has matured
    assert merchant["merchant_chargeback_count_30d"] == 0


def test_labels_count_only_once_matured() -> None:
    frames = aggregate(
        make_tx(
            # Fraud whose chargeback arrives exactly at H: not known in snapshot H.
            {schema.EVENT_TIMESTAMP: H - 3 * DAY, schema.IS_FRAUD: 1, schema.LABEL_AVAILABLE_AT: H},
            # Legit label matured well before H.
            {schema.EVENT_TIMESTAMP: H - 6 * DAY, schema.LABEL_AVAILABLE_AT: H - DAY},
            # Traffic in the hour before H, so there is a snapshot at H.
            {schema.EVENT_TIMESTAMP: H - 10 * 60 * SECOND},
        ),
        end=H + 2 * HOUR,
    )
    for entity, key, prefix in (("ip", "198.51.100.1", "ip"), ("merchant", "m_a", "merchant")):
        at_h = snapshot(frames, entity, key, H)
        assert at_h[f"{prefix}_chargeback_count_30d"] == 0
        assert at_h[f"{prefix}_fraud_rate_30d"] == 0.0
        # The maturing label alone creates the snapshot at H + 1h.
        later = snapshot(frames, entity, key, H + HOUR)
        assert later[f"{prefix}_chargeback_count_30d"] == 1
        assert later[f"{prefix}_fraud_rate_30d"] == pytest.approx(0.5)
        assert H - DAY + HOUR in snapshot_times(frames, entity, key)
    # Cards have no label features, so no label-driven snapshots.
    assert H + HOUR not in snapshot_times(frames, "card", "card_a")


def test_label_window_edges() -> None:
    frames = aggregate(
        make_tx(
            {schema.EVENT_TIMESTAMP: H - 40 * DAY, schema.IS_FRAUD: 1,
             schema.LABEL_AVAILABLE_AT: H - 30 * DAY},
            {schema.EVENT_TIMESTAMP: H - 40 * DAY, schema.IS_FRAUD: 1,
             schema.LABEL_AVAILABLE_AT: H - 30 * DAY - SECOND},
            {schema.EVENT_TIMESTAMP: H - 40 * DAY, schema.LABEL_AVAILABLE_AT: H - 2 * DAY},
            {schema.EVENT_TIMESTAMP: H - 40 * DAY, schema.LABEL_AVAILABLE_AT: H - 3 * DAY},
            {schema.EVENT_TIMESTAMP: H - 40 * DAY, schema.LABEL_AVAILABLE_AT: H - 4 * DAY},
            {schema.EVENT_TIMESTAMP: H - 30 * 60 * SECOND},
        )
    )  # fmt: skip
    ip = snapshot(frames, "ip", "198.51.100.1", H)
    assert ip["ip_chargeback_count_30d"] == 1
    assert ip["ip_fraud_rate_30d"] == pytest.approx(1 / 4)


def test_no_snapshot_after_end() -> None:
    tx = make_tx(
        {schema.EVENT_TIMESTAMP: H - 2 * HOUR},
        {schema.EVENT_TIMESTAMP: H - 30 * 60 * SECOND},
        {schema.EVENT_TIMESTAMP: H + 5 * 60 * SECOND},
        {schema.EVENT_TIMESTAMP: H + 3 * HOUR},
    )
    end = (H + 30 * 60 * SECOND).to_pydatetime()
    frames = aggregate(tx, end=end)
    for entity, frame in frames.items():
        assert frame[schema.EVENT_TIMESTAMP].max() == H, entity
        assert len(frame) == 2, entity  # H - 1h and H; labels mature after end
    # A naive end means UTC; an end exactly on a boundary keeps that snapshot.
    assert (
        aggregate(tx, end=H.tz_localize(None).to_pydatetime())["card"][schema.EVENT_TIMESTAMP].max()
        == H
    )


def test_default_end_covers_last_event() -> None:
    tx = make_tx({schema.EVENT_TIMESTAMP: H - 2 * HOUR}, {schema.EVENT_TIMESTAMP: H})
    for frame in aggregate(tx).values():
        assert frame[schema.EVENT_TIMESTAMP].max() == H + HOUR


def test_naive_timestamps_are_utc() -> None:
    tx = make_tx({schema.EVENT_TIMESTAMP: H - HOUR}, {schema.EVENT_TIMESTAMP: H + 90 * SECOND})
    naive = tx.copy()
    for column in (schema.EVENT_TIMESTAMP, schema.LABEL_AVAILABLE_AT):
        naive[column] = naive[column].dt.tz_localize(None)
    aware_frames, naive_frames = aggregate(tx), aggregate(naive)
    for entity in aware_frames:
        pd.testing.assert_frame_equal(aware_frames[entity], naive_frames[entity])


@pytest.fixture(scope="module")
def generated() -> pd.DataFrame:
    return generate_transactions(4_000, seed=21, days=12, end=datetime(2024, 3, 20, tzinfo=UTC))


@pytest.fixture(scope="module")
def generated_features(generated: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return aggregate(generated)


def test_columns_dtypes_and_no_nans(generated_features: dict[str, pd.DataFrame]) -> None:
    assert set(generated_features) == {"ip", "card", "merchant"}
    for entity, frame in generated_features.items():
        features = schema.ENTITY_FEATURES[entity]
        key = schema.ENTITY_JOIN_KEYS[entity]
        assert list(frame.columns) == [
            key,
            schema.EVENT_TIMESTAMP,
            schema.CREATED_TIMESTAMP,
            *features,
        ]
        assert frame[key].dtype == object
        assert str(frame[schema.EVENT_TIMESTAMP].dtype) == "datetime64[ns, UTC]"
        assert str(frame[schema.CREATED_TIMESTAMP].dtype) == "datetime64[ns, UTC]"
        assert (frame[schema.EVENT_TIMESTAMP] == frame[schema.CREATED_TIMESTAMP]).all()
        assert (frame[schema.EVENT_TIMESTAMP] == frame[schema.EVENT_TIMESTAMP].dt.floor("h")).all()
        for feature in features:
            expected = "int64" if "_count_" in feature or "_distinct_" in feature else "float64"
            assert str(frame[feature].dtype) == expected == schema.feature_dtype(feature)
        assert not frame.isna().any().any(), entity
        assert not frame.duplicated([key, schema.EVENT_TIMESTAMP]).any(), entity
        assert len(frame) > 0


def _brute_force(tx: pd.DataFrame, entity: str, key: str, at: pd.Timestamp) -> dict[str, float]:
    """Features of one snapshot computed directly from their definitions."""
    own = tx[tx[schema.ENTITY_JOIN_KEYS[entity]] == key]
    ts, label_at = own[schema.EVENT_TIMESTAMP], own[schema.LABEL_AVAILABLE_AT]

    def window(width: pd.Timedelta) -> pd.DataFrame:
        return own[(ts >= at - width) & (ts < at)]

    def mean(frame: pd.DataFrame) -> float:
        return float(frame[schema.AMOUNT].mean()) if len(frame) else 0.0

    matured = own[(label_at >= at - 30 * DAY) & (label_at < at)]
    chargebacks = int(matured[schema.IS_FRAUD].sum())
    rate = chargebacks / len(matured) if len(matured) else 0.0
    if entity == "ip":
        return {
            "ip_txn_count_1h": len(window(HOUR)),
            "ip_txn_count_24h": len(window(DAY)),
            "ip_txn_count_7d": len(window(7 * DAY)),
            "ip_distinct_cards_24h": window(DAY)[schema.CARD_ID].nunique(),
            "ip_amount_mean_7d": mean(window(7 * DAY)),
            "ip_chargeback_count_30d": chargebacks,
            "ip_fraud_rate_30d": rate,
        }
    if entity == "card":
        month, day = window(30 * DAY), window(DAY)
        return {
            "card_txn_count_1h": len(window(HOUR)),
            "card_txn_count_24h": len(day),
            "card_txn_count_7d": len(window(7 * DAY)),
            "card_amount_mean_30d": mean(month),
            "card_amount_max_30d": float(month[schema.AMOUNT].max()) if len(month) else 0.0,
            "card_distinct_ips_24h": day[schema.IP_ADDRESS].nunique(),
            "card_distinct_countries_24h": day[schema.IP_COUNTRY].nunique(),
            "card_small_txn_count_24h": int((day[schema.AMOUNT] < 5.0).sum()),
        }
    return {
        "merchant_txn_count_24h": len(window(DAY)),
        "merchant_txn_count_7d": len(window(7 * DAY)),
        "merchant_amount_mean_7d": mean(window(7 * DAY)),
        "merchant_chargeback_count_30d": chargebacks,
        "merchant_fraud_rate_30d": rate,
    }


@pytest.mark.parametrize("entity", ["ip", "card", "merchant"])
def test_matches_brute_force_on_generated_data(
    generated: pd.DataFrame, generated_features: dict[str, pd.DataFrame], entity: str
) -> None:
    frame = generated_features[entity]
    key_column = schema.ENTITY_JOIN_KEYS[entity]
    rng = np.random.default_rng(0)
    # Half random snapshots, half from the busiest entities (ring IPs, tested cards, ...).
    busiest = generated[key_column].value_counts().index[:10]
    busy_rows = np.flatnonzero(frame[key_column].isin(busiest))
    picks = np.concatenate(
        [rng.choice(len(frame), 60, replace=False), rng.choice(busy_rows, 60, replace=False)]
    )
    for _, row in frame.iloc[picks].iterrows():
        expected = _brute_force(generated, entity, row[key_column], row[schema.EVENT_TIMESTAMP])
        for feature, value in expected.items():
            assert row[feature] == pytest.approx(value, abs=1e-9), (feature, row[key_column])


def test_snapshots_exist_for_every_event_hour(
    generated: pd.DataFrame, generated_features: dict[str, pd.DataFrame]
) -> None:
    card = generated_features["card"]
    expected = set(
        zip(
            generated[schema.CARD_ID],
            generated[schema.EVENT_TIMESTAMP].dt.floor("h") + HOUR,
            strict=True,
        )
    )
    actual = set(zip(card[schema.CARD_ID], card[schema.EVENT_TIMESTAMP], strict=True))
    assert actual == expected


def test_empty_input_gives_empty_frames() -> None:
    empty = make_tx({schema.EVENT_TIMESTAMP: H}).iloc[:0]
    for entity, frame in aggregate(empty).items():
        assert frame.empty
        assert list(frame.columns)[3:] == schema.ENTITY_FEATURES[entity]
        assert str(frame[schema.EVENT_TIMESTAMP].dtype) == "datetime64[ns, UTC]"


def test_missing_columns_are_rejected() -> None:
    tx = make_tx({schema.EVENT_TIMESTAMP: H}).drop(columns=[schema.LABEL_AVAILABLE_AT])
    with pytest.raises(ValueError, match=schema.LABEL_AVAILABLE_AT):
        aggregate(tx)
