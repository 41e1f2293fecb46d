"""The fraud on-demand transforms: this payment's amount against the card's and IP's usual
amounts, and its countries against the card's; missing inputs give missing outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from feature_repo.fraud.transforms import amount_context, geo_context
from feature_repo.transforms import resolve

KNOWN = {
    "amount": [150.0],
    "card_amount_mean_30d": [50.0],
    "card_amount_max_30d": [200.0],
    "ip_amount_mean_7d": [40.0],
    "card_rt_amount_sum_1h": [30.0],
    "card_rt_txn_count_1h": [3],
}


def with_row(**change: Any) -> dict[str, list[Any]]:
    return {name: [change.get(name, values[0])] for name, values in KNOWN.items()}


def test_amount_is_set_against_the_cards_and_ips_usual() -> None:
    assert amount_context(KNOWN) == {
        "amount_to_card_mean_30d": [3.0],
        "amount_to_card_max_30d": [0.75],
        "amount_to_ip_mean_7d": [3.75],
        "amount_to_card_mean_1h": [15.0],  # 150 over 30 / 3
    }


@pytest.mark.parametrize(
    ("change", "missing"),
    [
        ({"amount": None}, "all"),
        ({"card_amount_mean_30d": None}, ["amount_to_card_mean_30d"]),
        ({"card_amount_mean_30d": 0.0}, ["amount_to_card_mean_30d"]),
        ({"card_amount_max_30d": -1.0}, ["amount_to_card_max_30d"]),
        ({"ip_amount_mean_7d": float("nan")}, ["amount_to_ip_mean_7d"]),
        ({"card_rt_txn_count_1h": 0, "card_rt_amount_sum_1h": 0.0}, ["amount_to_card_mean_1h"]),
        ({"card_rt_txn_count_1h": None}, ["amount_to_card_mean_1h"]),
    ],
)
def test_a_missing_or_non_positive_usual_amount_gives_a_missing_ratio(
    change: dict[str, Any], missing: Any
) -> None:
    out = amount_context(with_row(**change))
    gone = set(out) if missing == "all" else set(missing)
    assert {name for name, values in out.items() if values == [None]} == gone


def test_serving_columns_and_training_lists_give_identical_ratios() -> None:
    """Serving reads stored features as float32, training gets float64: both are rounded to
    float32 first, so the ratios agree to the last bit."""
    lists = {
        "amount": [123.456, 0.1],
        "card_amount_mean_30d": [7.891234567, 0.3],
        "card_amount_max_30d": [99.99, 0.7],
        "ip_amount_mean_7d": [12.3456789, 0.2],
        "card_rt_amount_sum_1h": [10.01, 0.9],
        "card_rt_txn_count_1h": [3, 7],
    }
    columns = {name: np.asarray(v, dtype=np.float32) for name, v in lists.items()}
    assert amount_context(columns) == amount_context(lists)


def test_countries_are_compared_with_the_cards() -> None:
    out = geo_context(
        {
            "card_country": ["US", "US", None, "FR", float("nan")],
            "ip_country": ["US", "RO", "US", "FR", "FR"],
            "merchant_country": ["GB", "US", "US", None, "FR"],
        }
    )
    assert out == {
        "ip_country_mismatch": [0.0, 1.0, None, 0.0, None],
        "merchant_country_mismatch": [1.0, 0.0, None, None, None],
    }


@pytest.mark.parametrize("function", [amount_context, geo_context])
def test_each_transform_reads_and_returns_what_it_declares(function) -> None:  # type: ignore[no-untyped-def]
    declared = resolve(f"feature_repo.fraud.transforms:{function.__name__}")
    inputs = {name: [None] for name in (*declared.request_fields, *declared.stored_inputs)}
    out = function(inputs)
    assert tuple(out) == declared.outputs
    assert all(values == [None] for values in out.values())
