"""Decision rules of a domain: conditions and red flags evaluated per row, threshold rules,
segments, entity gaps and the sentences explanations use; what a rule may not say is refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from feature_repo.domain_rules import (
    Condition,
    EntitySpec,
    FeatureText,
    PrecisionTarget,
    Reason,
    SegmentSpec,
    ThresholdRule,
    UncertainSpec,
)

COLUMNS = {
    "amount": np.array([10.0, 400.0, 400.0, 600.0, 600.0]),
    "usual": np.array([100.0, 100.0, 0.0, np.nan, 100.0]),
}


def test_conditions_evaluate_per_row_and_skip_missing_inputs() -> None:
    columns = {
        "amount": np.array([10.0, 400.0, 400.0, 600.0, 600.0]),
        "usual": np.array([100.0, 100.0, 0.0, np.nan, 100.0]),
    }
    ratio = Condition.model_validate("amount > 3 * usual")
    assert str(ratio) == "amount > 3 * usual"
    assert ratio.holds(columns).tolist() == [False, True, False, False, True]
    absent = Condition.model_validate("usual is missing")
    assert absent.holds(columns).tolist() == [False, False, False, True, False]
    plain = Condition.model_validate({"feature": "usual", "op": ">=", "value": 100})
    assert plain.holds(columns).tolist() == [True, True, False, False, True]
    # One row of Feast's python-mode values (None when missing).
    assert plain.holds({"usual": [None]}).tolist() == [False]


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("amount > 400", [False, False, False, True, True]),
        ("amount >= 400", [False, True, True, True, True]),
        ("amount < 400", [True, False, False, False, False]),
        ("amount <= 400", [True, True, True, False, False]),
        ("amount == 400", [False, True, True, False, False]),
        ("amount != 400", [True, False, False, True, True]),
        ("usual != 0", [True, True, False, False, True]),  # missing never holds, even for !=
        ("usual is present", [True, True, True, False, True]),
        ("amount >= 4 * usual", [False, True, False, False, True]),
    ],
)
def test_each_comparison_holds_row_by_row(text: str, rows: list[bool]) -> None:
    assert Condition.model_validate(text).holds(COLUMNS).tolist() == rows


@pytest.mark.parametrize(
    ("text", "parts", "written"),
    [
        ("  amount>=1e3 ", ("amount", ">=", 1000.0, None), "amount >= 1000"),
        ("amount > -2.5", ("amount", ">", -2.5, None), "amount > -2.5"),
        ("amount > .5*usual", ("amount", ">", 0.5, "usual"), "amount > 0.5 * usual"),
        ("usual is missing", ("usual", "missing", None, None), "usual is missing"),
    ],
)
def test_conditions_read_from_text_and_write_back(
    text: str, parts: tuple[Any, ...], written: str
) -> None:
    condition = Condition.model_validate(text)
    assert (condition.feature, condition.op, condition.value, condition.times) == parts
    assert str(condition) == written
    assert Condition.model_validate(str(condition)) == condition


def test_a_ratio_reads_both_features() -> None:
    assert Condition.model_validate("amount > 3 * usual").features == ("amount", "usual")
    assert Condition.model_validate("amount > 3").features == ("amount",)


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        ("amount > 3 *", "'amount > 3 *' is not a condition; write `feature >= 3`"),
        ("amount => 3", "is not a condition"),
        ("amount > lots", "is not a condition"),
        ({"feature": "amount", "op": "missing", "value": 1}, "`missing` takes no value"),
        ({"feature": "amount", "op": "present", "times": "usual"}, "`present` takes no value"),
        ({"feature": "amount", "op": ">", "value": float("inf")}, "needs a finite value"),
        ({"feature": "Amount", "op": ">", "value": 1}, "should match pattern"),
        ({"feature": "amount", "op": "~", "value": 1}, "op"),
    ],
)
def test_a_condition_that_says_nothing_is_refused(data: Any, refusal: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Condition.model_validate(data)
    assert refusal in str(caught.value)


def test_a_reason_holds_where_all_its_conditions_do() -> None:
    reason = Reason.model_validate(
        {
            "code": "large_for_the_card",
            "text": "An amount far above the card's usual.",
            "when": ["amount > 3 * usual", "amount >= 500"],
        }
    )
    assert reason.holds(COLUMNS).tolist() == [False, False, False, False, True]
    assert reason.features == ("amount", "usual")
    assert (reason.report, reason.baseline) == (True, True)
    single = Reason.model_validate({"code": "r", "text": "t", "when": "usual is missing"})
    assert [str(c) for c in single.when] == ["usual is missing"]


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"when": []}, "at least 1 item"),
        ({"text": ""}, "at least 1 character"),
        ({"code": "Large Claim"}, "should match pattern"),
    ],
)
def test_a_reason_needs_a_code_a_sentence_and_a_condition(
    change: dict[str, Any], refusal: str
) -> None:
    data = {"code": "large_claim", "text": "A large claim.", "when": "amount > 1", **change}
    with pytest.raises(ValidationError, match=refusal):
        Reason.model_validate(data)


def test_threshold_rule_describes_the_riskiest_label_first() -> None:
    rule = ThresholdRule.model_validate(
        {
            "targets": {
                "review": {"min_precision": 0.3, "fallback_quantile": 0.9},
                "refuse": {"min_precision": 0.8, "fallback_quantile": 0.995},
            }
        }
    )
    assert (rule.kind, rule.split) == ("precision_targets", "validation")
    assert rule.describe() == (
        "validation split: refuse = lowest score with precision >= 0.8 (else quantile 0.995); "
        "review = lowest score with precision >= 0.3 (else quantile 0.9)"
    )


@pytest.mark.parametrize(
    "target",
    [
        {"min_precision": 0.0, "fallback_quantile": 0.9},
        {"min_precision": 1.01, "fallback_quantile": 0.9},
        {"min_precision": 0.5, "fallback_quantile": 1.0},
        {"min_precision": 0.5, "fallback_quantile": 0.0},
    ],
)
def test_precision_targets_stay_within_their_range(target: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        PrecisionTarget.model_validate(target)
    assert PrecisionTarget.model_validate({"min_precision": 1.0, "fallback_quantile": 0.5})


def test_thresholds_are_placed_on_the_validation_split_only() -> None:
    with pytest.raises(ValidationError, match="'validation'"):
        ThresholdRule.model_validate({"split": "holdout", "targets": {}})


@pytest.mark.parametrize(
    ("segment", "refusal"),
    [
        ({"bins": [0]}, "bins need two or more strictly ascending edges"),
        ({"bins": [0, 10, 10]}, "bins need two or more strictly ascending edges"),
        ({"bins": [10, 0]}, "bins need two or more strictly ascending edges"),
        ({"bins": [0, 1], "differs_from": "card_country"}, "bins or differs_from, not both"),
        ({"name": ""}, "at least 1 character"),
    ],
)
def test_a_segment_breaks_results_down_one_way(segment: dict[str, Any], refusal: str) -> None:
    data = {"name": "by amount", "field": "amount", **segment}
    with pytest.raises(ValidationError, match=refusal):
        SegmentSpec.model_validate(data)


def test_segments_by_value_bins_or_comparison_load() -> None:
    assert SegmentSpec(name="by country", field="ip_country").bins is None
    assert SegmentSpec(name="by amount", field="amount", bins=[0, 10, 1e3]).bins == [0, 10, 1e3]
    cross = SegmentSpec(name="cross-border", field="ip_country", differs_from="card_country")
    assert cross.differs_from == "card_country"


def test_an_entity_gap_has_a_reason_code() -> None:
    assert EntitySpec(join_key="card_id").unknown_reason == "unknown_card_id"
    person = EntitySpec(join_key="dob_ssn", missing_reason="no_credit_history", route="people")
    assert person.unknown_reason == "no_credit_history"
    with pytest.raises(ValidationError, match="should match pattern"):
        EntitySpec(join_key="card_id", route="Cards/")


def test_uncertain_defaults_tolerate_one_unknown_entity() -> None:
    spec = UncertainSpec()
    assert (spec.required_entities, spec.optional_entities) == ([], [])
    assert (spec.max_unknown_entities, spec.stale_counts_as_unknown) == (1, True)
    assert spec.report_label_at_or_above is None
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        UncertainSpec(max_unknown_entities=-1)


def test_feature_sentences_show_the_value_or_say_it_is_missing() -> None:
    plain = FeatureText.model_validate("card used from {value:g} countries")
    assert plain.say("card_countries", 3.0) == "card used from 3 countries"
    assert plain.say("card_countries", None) == "card_countries: unknown"
    assert plain.say("card_countries", float("nan")) == "card_countries: unknown"
    rate = FeatureText.model_validate({"text": "{value:.1%} of payments", "missing": "no history"})
    assert rate.say("rate", 0.125) == "12.5% of payments"
    assert rate.say("rate", None) == "no history"


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("a large claim", "does not show the value; write {value} or {value:g}"),
        ("{value:q} claimed", "is not a format string of `value`"),
        ("{value} of {total}", "is not a format string of `value`"),
        ("", "at least 1 character"),
    ],
)
def test_a_feature_sentence_must_format_its_value(text: str, refusal: str) -> None:
    with pytest.raises(ValidationError) as caught:
        FeatureText.model_validate(text)
    assert refusal in str(caught.value)
