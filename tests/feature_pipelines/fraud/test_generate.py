"""Tests of the synthetic transaction generator."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from feature_pipelines.fraud import schema
from feature_pipelines.fraud.generate import generate_transactions
from feature_repo import clock
from feature_repo.reference import CURRENCIES

pytestmark = pytest.mark.clock

END = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
N_ROWS = 20_000


@pytest.fixture(scope="module")
def tx() -> pd.DataFrame:
    return generate_transactions(N_ROWS, seed=11, days=35, end=END)


def test_columns_and_dtypes_are_exact(tx: pd.DataFrame) -> None:
    assert list(tx.columns) == schema.TRANSACTION_COLUMNS
    assert {c: str(t) for c, t in tx.dtypes.items()} == dict(schema.TRANSACTION_DTYPES)
    assert len(tx) == N_ROWS
    assert not tx.isna().any().any()
    for column in tx.select_dtypes(include="object").columns:
        assert tx[column].map(type).eq(str).all(), column


def test_same_seed_gives_identical_frame(tx: pd.DataFrame) -> None:
    again = generate_transactions(N_ROWS, seed=11, days=35, end=END)
    pd.testing.assert_frame_equal(tx, again)


def test_other_seed_gives_other_frame(tx: pd.DataFrame) -> None:
    other = generate_transactions(N_ROWS, seed=12, days=35, end=END)
    assert not tx[schema.AMOUNT].equals(other[schema.AMOUNT])
    assert not tx[schema.CARD_ID].equals(other[schema.CARD_ID])


@pytest.mark.parametrize(("n_rows", "seed"), [(3_000, 1), (20_000, 11), (150_000, 3)])
def test_fraud_rate_between_1_and_3_percent(n_rows: int, seed: int) -> None:
    frame = generate_transactions(n_rows, seed=seed, end=END)
    assert 0.01 <= frame[schema.IS_FRAUD].mean() <= 0.03


def test_all_patterns_but_the_new_one_present_and_labels_noisy(tx: pd.DataFrame) -> None:
    assert set(tx[schema.FRAUD_PATTERN]) == set(schema.FRAUD_PATTERNS) - {schema.FRAUD_PATTERN_NEW}
    pattern, label = tx[schema.FRAUD_PATTERN], tx[schema.IS_FRAUD]
    assert (label[pattern == schema.FRAUD_PATTERN_NONE] == 0).all()
    # Friendly fraud: legitimate purchases charged back, labelled fraud.
    friendly = pattern == schema.FRAUD_PATTERN_FRIENDLY
    assert (label[friendly] == 1).all()
    assert 0.05 <= friendly.sum() / label.sum() <= 0.25
    # Some fraud of every pattern is never reported, most of it is.
    fraud = ~pattern.isin([schema.FRAUD_PATTERN_NONE, schema.FRAUD_PATTERN_FRIENDLY])
    assert 0.8 <= label[fraud].mean() < 1.0
    assert (label[fraud].groupby(pattern[fraud]).mean() < 1.0).sum() >= 3


def test_ids_are_unique_and_formatted(tx: pd.DataFrame) -> None:
    assert tx[schema.TRANSACTION_ID].is_unique
    assert tx[schema.TRANSACTION_ID].str.fullmatch(r"tx_\d{9}").all()
    assert tx[schema.CARD_ID].str.fullmatch(r"card_\d{7}").all()
    assert tx[schema.MERCHANT_ID].str.fullmatch(r"m_\d{5}").all()
    # Ids follow event time.
    assert tx[schema.EVENT_TIMESTAMP].is_monotonic_increasing
    assert tx[schema.TRANSACTION_ID].is_monotonic_increasing


def test_population_sizes(tx: pd.DataFrame) -> None:
    n_cards = tx[schema.CARD_ID].nunique()
    assert 0.8 * N_ROWS / 12 <= n_cards <= N_ROWS / 12
    assert tx[schema.MERCHANT_ID].nunique() >= 60
    assert set(tx[schema.MERCHANT_CATEGORY]) == set(schema.MERCHANT_CATEGORIES)
    for column in (schema.CARD_COUNTRY, schema.IP_COUNTRY, schema.MERCHANT_COUNTRY):
        assert set(tx[column]) <= set(schema.COUNTRIES)


def test_timestamps_within_range_and_labels_mature_later(tx: pd.DataFrame) -> None:
    ts = tx[schema.EVENT_TIMESTAMP]
    assert ts.min() > pd.Timestamp(END - timedelta(days=35))
    assert ts.max() <= pd.Timestamp(END)
    delay = tx[schema.LABEL_AVAILABLE_AT] - ts
    assert delay.min() >= pd.Timedelta(days=2)
    assert delay.max() <= pd.Timedelta(days=15)
    fraud = tx[schema.IS_FRAUD] == 1
    # Same maturity distribution for fraud and legit: the delay itself must not leak the label.
    assert abs(delay[fraud].mean() - delay[~fraud].mean()) < pd.Timedelta(hours=12)


def test_amounts_positive_with_two_decimals(tx: pd.DataFrame) -> None:
    amount = tx[schema.AMOUNT].to_numpy()
    assert (amount > 0).all()
    np.testing.assert_allclose(amount, np.round(amount, 2), rtol=0, atol=1e-9)


def test_currency_matches_card_country(tx: pd.DataFrame) -> None:
    expected = tx[schema.CARD_COUNTRY].map(schema.COUNTRY_CURRENCY)
    assert (tx[schema.CURRENCY] == expected).all()
    # Every generated currency is one the service accepts (the platform's reference list).
    assert set(tx[schema.CURRENCY]) <= CURRENCIES
    assert {"USD", "EUR", "GBP", "JPY"} <= set(tx[schema.CURRENCY])


def test_ip_addresses_are_canonical_with_some_ipv6(tx: pd.DataFrame) -> None:
    ips = tx[schema.IP_ADDRESS].unique()
    parsed = [ipaddress.ip_address(ip) for ip in ips]
    assert [str(p) for p in parsed] == list(ips)
    doc_v6 = ipaddress.ip_network("2001:db8::/32")
    assert all(p in doc_v6 for p in parsed if p.version == 6)
    v6_share = tx[schema.IP_ADDRESS].str.contains(":").mean()
    assert 0.02 <= v6_share <= 0.10


def test_legit_traffic_mostly_from_home_country(tx: pd.DataFrame) -> None:
    legit = tx[tx[schema.FRAUD_PATTERN] == schema.FRAUD_PATTERN_NONE]
    home = (legit[schema.IP_COUNTRY] == legit[schema.CARD_COUNTRY]).mean()
    assert 0.85 <= home < 0.97  # travel, holders who moved abroad, VPN use


def test_legit_behaviour_overlaps_fraud(tx: pd.DataFrame) -> None:
    """Legitimate rows also come from abroad, from fraud-origin countries, buy big at resellable
    categories and pay tiny amounts; some cards appear only late in the range."""
    legit = tx[tx[schema.FRAUD_PATTERN] == schema.FRAUD_PATTERN_NONE]
    abroad = legit[legit[schema.IP_COUNTRY] != legit[schema.CARD_COUNTRY]]
    origins = {"NG", "RU", "RO", "UA", "VN", "ID", "BR", "CN", "PH", "IN"}
    assert abroad[schema.IP_COUNTRY].isin(origins).mean() >= 0.1
    resellable = legit[schema.MERCHANT_CATEGORY].isin(["electronics", "jewelry", "gift_cards"])
    assert (resellable & (legit[schema.AMOUNT] > 300)).sum() >= 50
    assert (legit[schema.AMOUNT] <= 3.0).mean() >= 0.005
    first_use = legit.groupby(schema.CARD_ID)[schema.EVENT_TIMESTAMP].min()
    start = pd.Timestamp(END - timedelta(days=35))
    assert (first_use > start + pd.Timedelta(days=14)).mean() >= 0.03


def test_some_holders_move_abroad_for_good(tx: pd.DataFrame) -> None:
    legit = tx[tx[schema.FRAUD_PATTERN] == schema.FRAUD_PATTERN_NONE].copy()
    legit["abroad"] = legit[schema.IP_COUNTRY] != legit[schema.CARD_COUNTRY]
    last_week = legit[legit[schema.EVENT_TIMESTAMP] > pd.Timestamp(END - timedelta(days=7))]
    per_card = last_week.groupby(schema.CARD_ID)["abroad"].agg(["mean", "size"])
    # Trips last at most 10 days; a card abroad all of its last week with many rows moved.
    settled = per_card[(per_card["size"] >= 3) & (per_card["mean"] >= 0.8)]
    assert len(settled) >= 3


def test_diurnal_pattern_in_local_time(tx: pd.DataFrame) -> None:
    us = tx[(tx[schema.CARD_COUNTRY] == "US") & (tx[schema.IS_FRAUD] == 0)]
    local_hour = (us[schema.EVENT_TIMESTAMP] - pd.Timedelta(hours=5)).dt.hour
    night = local_hour.between(2, 4).sum()
    evening = local_hour.between(18, 20).sum()
    assert night < 0.5 * evening


def test_card_testing_is_a_burst_of_tiny_amounts_then_large(tx: pd.DataFrame) -> None:
    testing = tx[tx[schema.FRAUD_PATTERN] == "card_testing"]
    assert testing[schema.CARD_ID].nunique() >= 2
    for _, card in testing.groupby(schema.CARD_ID):
        probes = card[card[schema.AMOUNT] <= 3.0]
        large = card[card[schema.AMOUNT] > 3.0]
        assert 5 <= len(probes) <= 25
        assert probes[schema.AMOUNT].min() >= 0.5
        span = probes[schema.EVENT_TIMESTAMP].max() - probes[schema.EVENT_TIMESTAMP].min()
        assert span <= pd.Timedelta(hours=2)
        assert 1 <= len(large) <= 3
        assert large[schema.EVENT_TIMESTAMP].min() > probes[schema.EVENT_TIMESTAMP].max()
        assert large[schema.AMOUNT].max() > 20
    categories = testing.loc[testing[schema.AMOUNT] <= 3.0, schema.MERCHANT_CATEGORY]
    assert categories.value_counts().index[0] == "digital_goods"


def test_stolen_cards_used_mostly_from_foreign_ips_over_days(tx: pd.DataFrame) -> None:
    stolen = tx[tx[schema.FRAUD_PATTERN] == "stolen_card"]
    # The rest hides behind domestic residential proxies.
    assert 0.55 <= (stolen[schema.IP_COUNTRY] != stolen[schema.CARD_COUNTRY]).mean() <= 0.9
    spans = stolen.groupby(schema.CARD_ID)[schema.EVENT_TIMESTAMP].agg(lambda s: s.max() - s.min())
    assert (spans <= pd.Timedelta(days=3)).all()
    assert stolen[schema.AMOUNT].median() > 2 * tx[schema.AMOUNT].median()
    # The victims' legitimate use goes on.
    victims = set(stolen[schema.CARD_ID])
    legit = tx[(tx[schema.IS_FRAUD] == 0) & tx[schema.CARD_ID].isin(victims)]
    assert legit[schema.CARD_ID].nunique() >= 0.5 * len(victims)


def test_ring_ips_are_shared_by_many_cards_for_weeks(tx: pd.DataFrame) -> None:
    ring = tx[tx[schema.FRAUD_PATTERN] == "ring"]
    per_ip = ring.groupby(schema.IP_ADDRESS).agg(
        cards=(schema.CARD_ID, "nunique"),
        first=(schema.EVENT_TIMESTAMP, "min"),
        last=(schema.EVENT_TIMESTAMP, "max"),
    )
    # Most ring rows go through the rings' own IPs; the rest through one-off domestic proxies.
    shared = per_ip[per_ip["cards"] >= 5]
    assert 0.55 <= ring[schema.IP_ADDRESS].isin(shared.index).mean() <= 0.9
    assert ((shared["last"] - shared["first"]) >= pd.Timedelta(days=7)).mean() >= 0.5
    foreign = (ring[schema.IP_COUNTRY] != ring[schema.CARD_COUNTRY]).mean()
    assert foreign >= 0.5


def test_risky_merchants_have_elevated_fraud_rate(tx: pd.DataFrame) -> None:
    risky = set(tx.loc[tx[schema.FRAUD_PATTERN] == "risky_merchant", schema.MERCHANT_ID])
    n_merchants = tx[schema.MERCHANT_ID].nunique()
    assert 2 <= len(risky) <= max(2, round(0.05 * n_merchants))
    at_risky = tx[schema.MERCHANT_ID].isin(risky)
    rate_risky = tx.loc[at_risky, schema.IS_FRAUD].mean()
    rate_other = tx.loc[~at_risky, schema.IS_FRAUD].mean()
    assert rate_risky >= 5 * rate_other


def test_late_fraud_is_predictable_from_matured_history(tx: pd.DataFrame) -> None:
    """Late ring fraud through the rings' own IPs, and late risky-merchant fraud, hit IPs /
    merchants with fraud labels already known."""
    fraud = tx[tx[schema.IS_FRAUD] == 1]
    late_start = pd.Timestamp(END) - pd.Timedelta(days=7)
    ring_cards = (
        tx[tx[schema.FRAUD_PATTERN] == "ring"].groupby(schema.IP_ADDRESS)[schema.CARD_ID].nunique()
    )
    ring_ips = set(ring_cards[ring_cards >= 5].index)
    for pattern, key in (("ring", schema.IP_ADDRESS), ("risky_merchant", schema.MERCHANT_ID)):
        first_known = fraud.groupby(key)[schema.LABEL_AVAILABLE_AT].min()
        late = fraud[
            (fraud[schema.FRAUD_PATTERN] == pattern)
            & (fraud[schema.EVENT_TIMESTAMP] >= late_start)
            & ((pattern != "ring") | fraud[schema.IP_ADDRESS].isin(ring_ips))
        ]
        assert len(late) > 0
        known = late[key].map(first_known) < late[schema.EVENT_TIMESTAMP]
        assert known.mean() >= 0.8, pattern


NEW_FROM_DAY = 28


@pytest.fixture(scope="module")
def drifted() -> pd.DataFrame:
    return generate_transactions(
        N_ROWS, seed=11, days=35, end=END, new_pattern_from_day=NEW_FROM_DAY
    )


def test_new_pattern_starts_on_its_day_and_leaves_the_world_before_unchanged(
    tx: pd.DataFrame, drifted: pd.DataFrame
) -> None:
    day = pd.Timestamp(END - timedelta(days=35 - NEW_FROM_DAY))
    new = drifted[drifted[schema.FRAUD_PATTERN] == schema.FRAUD_PATTERN_NEW]
    assert len(new) >= 0.005 * (drifted[schema.EVENT_TIMESTAMP] > day).sum()
    assert new[schema.EVENT_TIMESTAMP].min() > day
    assert 0.8 <= new[schema.IS_FRAUD].mean() < 1.0  # reported like the other patterns
    assert list(drifted.columns) == schema.TRANSACTION_COLUMNS and len(drifted) == N_ROWS

    def before(frame: pd.DataFrame) -> pd.DataFrame:
        rows = frame[frame[schema.EVENT_TIMESTAMP] <= day]
        return rows.drop(columns=schema.TRANSACTION_ID).reset_index(drop=True)

    pd.testing.assert_frame_equal(before(tx), before(drifted))
    after = tx[tx[schema.EVENT_TIMESTAMP] > day]
    assert len(after) == (drifted[schema.EVENT_TIMESTAMP] > day).sum()
    assert schema.FRAUD_PATTERN_NEW not in set(tx[schema.FRAUD_PATTERN])


def test_new_pattern_is_a_burst_of_everyday_amounts_from_the_cards_own_ip(
    drifted: pd.DataFrame,
) -> None:
    """What the hourly batch features and the request cannot tell from a legitimate purchase:
    a known IP of the card, a merchant in the country the card is used in, usual amounts; only
    the minute-scale burst on the card stands out."""
    new = drifted[drifted[schema.FRAUD_PATTERN] == schema.FRAUD_PATTERN_NEW]
    legit = drifted[drifted[schema.FRAUD_PATTERN] == schema.FRAUD_PATTERN_NONE]
    known = set(zip(legit[schema.CARD_ID], legit[schema.IP_ADDRESS], strict=True))
    pairs = zip(new[schema.CARD_ID], new[schema.IP_ADDRESS], strict=True)
    assert np.mean([pair in known for pair in pairs]) >= 0.9
    assert (new[schema.MERCHANT_COUNTRY] == new[schema.IP_COUNTRY]).mean() >= 0.95
    assert new[schema.AMOUNT].between(schema.SMALL_AMOUNT_THRESHOLD, 200).mean() >= 0.95
    assert 0.5 <= new[schema.AMOUNT].median() / legit[schema.AMOUNT].median() <= 2.0
    per_card = new.groupby(schema.CARD_ID)[schema.EVENT_TIMESTAMP].agg(["size", "min", "max"])
    assert per_card["size"].between(3, 6).all()
    assert ((per_card["max"] - per_card["min"]) <= pd.Timedelta(minutes=12)).all()


def test_end_defaults_to_now_floored_to_minute() -> None:
    before = clock.now().replace(second=0, microsecond=0)
    frame = generate_transactions(2_000, seed=1, days=2)
    after = clock.now()
    latest = frame[schema.EVENT_TIMESTAMP].max()
    assert latest <= pd.Timestamp(after)
    assert frame[schema.EVENT_TIMESTAMP].min() > pd.Timestamp(before - timedelta(days=2, minutes=1))


def test_naive_end_is_utc() -> None:
    naive = generate_transactions(2_000, seed=5, days=3, end=END.replace(tzinfo=None))
    aware = generate_transactions(2_000, seed=5, days=3, end=END)
    pd.testing.assert_frame_equal(naive, aware)


@pytest.mark.parametrize(("n_rows", "days"), [(0, 35), (1_000, 0), (10, 35)])
def test_rejects_invalid_arguments(n_rows: int, days: int) -> None:
    with pytest.raises(ValueError):
        generate_transactions(n_rows, days=days, end=END)


@pytest.mark.parametrize("day", [-1, 35, 40])
def test_rejects_a_new_pattern_day_outside_the_range(day: int) -> None:
    with pytest.raises(ValueError, match="must be a day of the range, 0 to 34"):
        generate_transactions(2_000, days=35, end=END, new_pattern_from_day=day)
