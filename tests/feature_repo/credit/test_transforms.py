"""The credit on-demand transforms: loan and debts against income, income against the ZIP code's
wages, and categories encoded by their position in the declared vocabularies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from feature_pipelines.credit.load import DEFAULT_REPO
from feature_repo.credit import transforms
from feature_repo.credit.transforms import (
    application_categories,
    application_ratios,
    codes,
    credit_burden,
)
from feature_repo.domain import load_domain
from feature_repo.transforms import resolve


def test_encodings_follow_the_declared_vocabularies() -> None:
    """transforms.py encodes each category by its position in domain.yaml's values."""
    spec = load_domain(DEFAULT_REPO)
    home = spec.request_fields["person_home_ownership"].constraints.values or []
    intent = spec.request_fields["loan_intent"].constraints.values or []
    width = max(len(home), len(intent))
    out = transforms.application_categories(
        {
            "person_home_ownership": [*home, *[None] * (width - len(home))],
            "loan_intent": [*intent, *[None] * (width - len(intent))],
        }
    )
    assert out["home_ownership_code"][: len(home)] == [float(i) for i in range(len(home))]
    assert out["loan_intent_code"][: len(intent)] == [float(i) for i in range(len(intent))]
    assert all(math.isnan(v) for v in out["home_ownership_code"][len(home) :])


def test_codes_are_positions_and_nan_for_anything_else() -> None:
    out = codes(["B", "A", None, "Z", float("nan"), "a"], ("A", "B"))
    assert out[:2] == [1.0, 0.0]
    # NaN, not None: `feast apply` infers the output type from the first value.
    assert all(isinstance(v, float) and math.isnan(v) for v in out[2:])


def test_an_unknown_category_is_encoded_as_missing() -> None:
    out = application_categories(
        {"person_home_ownership": ["OWN", "CASTLE"], "loan_intent": ["VENTURE", None]}
    )
    assert out["home_ownership_code"][0] == 1.0 and math.isnan(out["home_ownership_code"][1])
    assert out["loan_intent_code"][0] == 2.0 and math.isnan(out["loan_intent_code"][1])


def test_application_ratios() -> None:
    out = application_ratios(
        {
            "loan_amnt": [10_000, 5_000, 5_000, 5_000],
            "person_income": [50_000, 0, 60_000, 60_000],
            "total_wages": [3_000_000, 3_000_000, None, 1_000],
            "tax_returns_filed": [100, 100, None, 0],
        }
    )
    assert out["loan_to_income"] == [0.2, None, pytest.approx(1 / 12), pytest.approx(1 / 12)]
    # Income over the ZIP code's mean wage per return; unknown without a ZIP row or returns.
    assert out["income_to_zip_mean_wage"] == [pytest.approx(50_000 / 30_000), 0.0, None, None]


def test_credit_burden_is_missing_without_a_history_not_zero() -> None:
    due = {"credit_card_due": 1_000, "mortgage_due": 20_000, "student_loan_due": 4_000}
    out = credit_burden(
        {
            "person_income": [50_000, 50_000, 50_000, 0],
            **{name: [value, None, value, value] for name, value in due.items()},
            "vehicle_loan_due": [0, None, None, 0],
        }
    )
    assert out["debt_to_income"] == [0.5, None, None, None]


def test_numpy_columns_and_lists_give_identical_features() -> None:
    lists = {"loan_amnt": [12_345.0, 777.0], "person_income": [54_321.0, 33_333.0]}
    lists |= {"total_wages": [9_876_543.0, 1.0], "tax_returns_filed": [321.0, 3.0]}
    columns = {name: np.asarray(v, dtype=np.float32) for name, v in lists.items()}
    assert application_ratios(columns) == application_ratios(lists)


@pytest.mark.parametrize("function", [application_ratios, credit_burden, application_categories])
def test_each_transform_reads_and_returns_what_it_declares(function) -> None:  # type: ignore[no-untyped-def]
    declared = resolve(f"feature_repo.credit.transforms:{function.__name__}")
    inputs: dict[str, list[Any]] = {
        name: [None] for name in (*declared.request_fields, *declared.stored_inputs)
    }
    out = function(inputs)
    assert tuple(out) == declared.outputs
    assert all(v[0] is None or math.isnan(v[0]) for v in out.values())
