"""On-demand features of loan applications: the application set against what the store knows.

Called by the on-demand feature views in ``on_demand_features.py`` (training, through Feast) and
by the scoring service (serving), so both compute them with this code. See
``feature_repo.transforms`` for the contract.

Categorical fields are encoded here, by their position in a vocabulary written inside the
function: the function's sha256 then changes with the vocabulary, and the service refuses a model
trained with another encoding. The vocabularies equal the ``values`` declared in
``domain.yaml`` (a test keeps them equal); the request layer has already applied each field's
declared unknown treatment, and anything still outside the vocabulary is encoded as missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from feature_repo.transforms import Columns, listed, numbers, on_demand_transform, ratio, texts


def codes(values: Sequence[Any] | np.ndarray, vocabulary: Sequence[str]) -> list[float | None]:
    """Position of each value in the vocabulary; NaN for a missing or unknown value.

    NaN rather than None: ``feast apply`` infers each output's type from its first value on
    made-up text, which no vocabulary holds.
    """
    index = {value: float(i) for i, value in enumerate(vocabulary)}
    return [math.nan if v is None else index.get(v, math.nan) for v in texts(values)]


@on_demand_transform(
    request_fields=("loan_amnt", "person_income"),
    stored_inputs=("tax_returns_filed", "total_wages"),
    outputs=("loan_to_income", "income_to_zip_mean_wage"),
)
def application_ratios(inputs: Columns) -> dict[str, list[float | None]]:
    """The loan against the applicant's income, and the income against the ZIP code's wages.

    A loan that is a large share of a year's income is the strongest single sign of default; an
    income far below the ZIP code's mean wage per tax return puts it in context.
    """
    loan = numbers(inputs["loan_amnt"])
    income = numbers(inputs["person_income"])
    zip_mean_wage = ratio(numbers(inputs["total_wages"]), numbers(inputs["tax_returns_filed"]))
    return {
        "loan_to_income": listed(ratio(loan, income)),
        "income_to_zip_mean_wage": listed(ratio(income, zip_mean_wage)),
    }


@on_demand_transform(
    request_fields=("person_income",),
    stored_inputs=("credit_card_due", "mortgage_due", "student_loan_due", "vehicle_loan_due"),
    outputs=("debt_to_income",),
)
def credit_burden(inputs: Columns) -> dict[str, list[float | None]]:
    """Debts due (cards, mortgage, student and vehicle loans) over the yearly income.

    Missing (None) for an applicant without a credit history: no history is not zero debt.
    """
    income = numbers(inputs["person_income"])
    due = (
        numbers(inputs["credit_card_due"])
        + numbers(inputs["mortgage_due"])
        + numbers(inputs["student_loan_due"])
        + numbers(inputs["vehicle_loan_due"])
    )
    return {"debt_to_income": listed(ratio(due, income))}


@on_demand_transform(
    request_fields=("person_home_ownership", "loan_intent"),
    stored_inputs=(),
    outputs=("home_ownership_code", "loan_intent_code"),
)
def application_categories(inputs: Columns) -> dict[str, list[float | None]]:
    """Home ownership and loan intent as codes (positions in their vocabularies)."""
    return {
        "home_ownership_code": codes(
            inputs["person_home_ownership"], ("RENT", "OWN", "MORTGAGE", "OTHER")
        ),
        "loan_intent_code": codes(
            inputs["loan_intent"],
            (
                "EDUCATION",
                "MEDICAL",
                "VENTURE",
                "PERSONAL",
                "DEBTCONSOLIDATION",
                "HOMEIMPROVEMENT",
            ),
        ),
    }
