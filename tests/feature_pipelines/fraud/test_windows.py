"""The fraud stream windows: what each declared feature counts, on planted payments.

The shared window machinery is tested on its own (``tests/feature_pipelines/streaming``); here the
fraud catalogue's declarations are: each window's width and open left edge, sums in exact cents,
the small-amount threshold shared with the batch features, and which entity's distinct values
each kind counts.
"""

from __future__ import annotations

import pandas as pd
import pytest

from feature_pipelines.fraud import schema
from feature_pipelines.fraud.windows import CATALOGUE, STATE_PREFIX
from feature_pipelines.streaming.replay import stream_tables
from feature_pipelines.streaming.state import state_key

T0 = pd.Timestamp("2024-03-10 12:00", tz="UTC")
MINUTE = pd.Timedelta(minutes=1)
ROW_STAMP = pd.Timedelta(microseconds=1)  # a row is stamped just after its event

# (offset from T0, amount, ip, card)
PAYMENTS = [
    (pd.Timedelta(0), 4.99, "198.51.100.1", "card_c"),
    (2 * MINUTE, 7.00, "198.51.100.1", "card_d"),
    (5 * MINUTE - pd.Timedelta(seconds=1), 0.10, "198.51.100.2", "card_c"),
    (5 * MINUTE, 0.20, "198.51.100.1", "card_c"),
    (10 * MINUTE, 5.00, "198.51.100.3", "card_c"),
    (60 * MINUTE, 100.00, "198.51.100.1", "card_c"),
]


@pytest.fixture(scope="module")
def rows() -> dict[str, pd.DataFrame]:
    frame = pd.DataFrame(
        {
            schema.EVENT_TIMESTAMP: [T0 + offset for offset, *_ in PAYMENTS],
            schema.AMOUNT: [amount for _, amount, _, _ in PAYMENTS],
            schema.IP_ADDRESS: [ip for *_, ip, _ in PAYMENTS],
            schema.CARD_ID: [card for *_, card in PAYMENTS],
        }
    )
    return stream_tables(CATALOGUE, frame)


def row_at(rows: dict[str, pd.DataFrame], table: str, key: str, offset: pd.Timedelta) -> pd.Series:
    frame = rows[table]
    join_key = CATALOGUE.tables[table].join_key
    found = frame[
        (frame[join_key] == key) & (frame[schema.EVENT_TIMESTAMP] == T0 + offset + ROW_STAMP)
    ]
    assert len(found) == 1, (table, key, offset)
    return found.iloc[0]


def test_card_windows_at_five_minutes_leave_out_the_event_on_the_edge(rows) -> None:
    row = row_at(rows, "card_stream", "card_c", 5 * MINUTE)
    # (T0, T0 + 5 min]: the 4.99 payment at T0 is out of the 5-minute windows, in the hour.
    assert row["card_rt_txn_count_5m"] == 2
    assert row["card_rt_amount_sum_5m"] == 0.3  # 10 + 20 cents, no binary rounding error
    assert row["card_rt_txn_count_1h"] == 3
    assert row["card_rt_amount_sum_1h"] == 5.29
    assert row["card_rt_small_txn_count_1h"] == 3
    assert row["card_rt_distinct_ips_10m"] == 2


def test_small_means_below_the_batch_threshold_and_distinct_ips_span_ten_minutes(rows) -> None:
    row = row_at(rows, "card_stream", "card_c", 10 * MINUTE)
    assert schema.SMALL_AMOUNT_THRESHOLD == 5.0
    assert row["card_rt_small_txn_count_1h"] == 3  # 5.00 is not below 5.0
    assert row["card_rt_txn_count_5m"] == 1  # the 0.20 payment sits on the edge, T - 5 min
    assert row["card_rt_distinct_ips_10m"] == 3  # .1 seen again at T0 + 5 min, inside
    assert row["card_rt_amount_sum_1h"] == 10.29


def test_the_hour_window_ends_an_hour_back_exactly(rows) -> None:
    row = row_at(rows, "card_stream", "card_c", 60 * MINUTE)
    assert row["card_rt_txn_count_1h"] == 4  # the payment at T0 has just left
    assert row["card_rt_amount_sum_1h"] == 105.3
    assert row["card_rt_small_txn_count_1h"] == 2
    assert row["card_rt_distinct_ips_10m"] == 1
    assert row["card_rt_txn_count_5m"] == 1


def test_ip_windows_count_the_cards_seen_from_it(rows) -> None:
    row = row_at(rows, "ip_stream", "198.51.100.1", 5 * MINUTE)
    assert row["ip_rt_txn_count_5m"] == 2  # card_d at T0 + 2 min and this payment
    assert row["ip_rt_amount_sum_5m"] == 7.2
    assert row["ip_rt_txn_count_1h"] == 3
    assert row["ip_rt_amount_sum_1h"] == 12.19
    assert row["ip_rt_distinct_cards_10m"] == 2
    late = row_at(rows, "ip_stream", "198.51.100.1", 60 * MINUTE)
    assert (late["ip_rt_txn_count_1h"], late["ip_rt_distinct_cards_10m"]) == (3, 1)


def test_every_payment_gives_one_row_per_kind(rows) -> None:
    assert len(rows["card_stream"]) == len(rows["ip_stream"]) == len(PAYMENTS)
    assert rows["card_stream"].columns.tolist()[3:] == CATALOGUE.kind("card").feature_names


def test_window_state_keys_are_fraud_keys_hashed_by_entity() -> None:
    assert state_key(STATE_PREFIX, "card", "card_c") == "fraud:rt:card:{card_c}"
    # Amounts become whole cents, half a cent to the even one.
    assert CATALOGUE.to_units([12.34, 0.125, 0.375]).tolist() == [1234, 12, 38]
