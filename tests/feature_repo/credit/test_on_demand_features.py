"""The credit on-demand views: each runs the transform its tag names (the one serving runs),
over the request fields and stored features it declares, with the types its schema states.

Their values through Feast (offline and online, applied and materialized) are checked in
``tests/feature_repo/test_credit_repo.py``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from feature_pipelines.credit.load import DEFAULT_REPO
from feature_repo.transforms import resolve
from tests.feature_repo.on_demand_definitions import OnDemandDefinition, on_demand_views

# Feast's python-mode batch: an application with a history and a known ZIP code, one without.
SAMPLE = {
    "loan_amnt": [10_000.0, 5_000.0],
    "person_income": [50_000.0, 40_000.0],
    "person_home_ownership": ["MORTGAGE", "CASTLE"],
    "loan_intent": ["MEDICAL", None],
    "tax_returns_filed": [100, None],
    "total_wages": [3_000_000, None],
    "credit_card_due": [1_000, None],
    "mortgage_due": [20_000, None],
    "student_loan_due": [4_000, None],
    "vehicle_loan_due": [0, None],
}


@pytest.fixture(scope="module")
def views() -> dict[str, OnDemandDefinition]:
    return on_demand_views(DEFAULT_REPO, SAMPLE)


def same(left: list[Any], right: list[Any]) -> bool:
    """Equal lists, a missing value (None or NaN) equal to another."""

    def missing(v: Any) -> bool:
        return v is None or (isinstance(v, float) and math.isnan(v))

    return len(left) == len(right) and all(
        (missing(a) and missing(b)) or a == b for a, b in zip(left, right, strict=True)
    )


def test_each_view_runs_the_transform_its_tag_names(views) -> None:
    assert sorted(views) == ["application_categories", "application_ratios", "credit_burden"]
    for name, view in views.items():
        transform = resolve(view.tags["transform"])
        assert transform.reference == f"feature_repo.credit.transforms:{name}"
        assert view.mode == "python"
        expected = transform.function(SAMPLE)
        assert list(view.sample_output) == list(expected), name
        for output, values in expected.items():
            assert same(view.sample_output[output], values), (name, output)


def test_each_view_declares_what_its_transform_reads_and_returns(views) -> None:
    for name, view in views.items():
        transform = resolve(view.tags["transform"])
        assert view.outputs == [(o, "Float64") for o in transform.outputs], name
        assert set(transform.request_fields) <= set(dict(view.request_fields)), name
        stored = {f for features in view.source_views.values() for f in features}
        assert set(transform.stored_inputs) <= stored, name


def test_each_view_reads_the_evidence_it_needs_and_no_more(views) -> None:
    """A view over a stored view needs that entity's row: categories need none, the debt ratio
    the credit history, the income ratios the ZIP code."""
    assert {name: sorted(v.source_views) for name, v in views.items()} == {
        "application_ratios": ["zipcode_features"],
        "credit_burden": ["credit_history"],
        "application_categories": [],
    }
    assert dict(views["application_categories"].request_fields) == {
        "loan_amnt": "Float64",
        "person_income": "Float64",
        "person_home_ownership": "String",
        "loan_intent": "String",
    }


def test_the_sample_gives_the_planted_values(views) -> None:
    assert views["application_ratios"].sample_output["loan_to_income"] == [0.2, 0.125]
    assert views["credit_burden"].sample_output["debt_to_income"] == [0.5, None]
    codes = views["application_categories"].sample_output
    assert codes["home_ownership_code"][0] == 2.0 and math.isnan(codes["home_ownership_code"][1])
    assert codes["loan_intent_code"][0] == 1.0 and math.isnan(codes["loan_intent_code"][1])
