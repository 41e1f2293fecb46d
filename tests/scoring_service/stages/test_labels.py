"""Label mapping: thresholds at their edges, the uncertain policy, the fraud domain's declared
red flags (feature_repo/fraud/domain.yaml) and a second vocabulary."""

import math

import numpy as np
import pytest

from feature_repo.domain import load_domain
from models.package import LabelThresholds, UncertainPolicy
from scoring_service.stages.features import MISSING, NOT_REQUESTED, PRESENT, STALE
from scoring_service.stages.labels import LabelPolicy
from tests.conftest import FEATURE_REPO

FEATURES = ["ip_distinct_cards_24h", "card_amount_mean_30d", "amount"]
FRAUD = load_domain(FEATURE_REPO)
LABELS = ["not_fraud", "suspicious", "highly_suspicious"]


def policy(**uncertain) -> LabelPolicy:
    return LabelPolicy(
        LabelThresholds(suspicious=0.3, highly_suspicious=0.8),
        UncertainPolicy(**{"report_label_at_or_above": "highly_suspicious", **uncertain}),
        FEATURES,
        LABELS,
        reasons=FRAUD.reasons_for(FEATURES, report=True),
    )


ALL_PRESENT = {"ip_address": PRESENT, "card_id": PRESENT, "merchant_id": PRESENT}
ROW = np.array([1.0, 50.0, 60.0], dtype=np.float32)


@pytest.mark.parametrize(
    ("score", "label"),
    [
        (0.0, "not_fraud"),
        (math.nextafter(0.3, 0.0), "not_fraud"),
        (0.3, "suspicious"),
        (math.nextafter(0.8, 0.0), "suspicious"),
        (0.8, "highly_suspicious"),
        (1.0, "highly_suspicious"),
    ],
)
def test_threshold_edges(score: float, label: str) -> None:
    assert policy().decide(score, ROW, ALL_PRESENT)[0] == label


def test_equal_thresholds_skip_suspicious() -> None:
    p = LabelPolicy(
        LabelThresholds(suspicious=0.5, highly_suspicious=0.5), UncertainPolicy(), [], LABELS
    )
    assert p.score_label(0.5) == "highly_suspicious"
    assert p.score_label(0.49) == "not_fraud"


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="must not exceed"):
        LabelThresholds(suspicious=0.9, highly_suspicious=0.1)


def test_one_unknown_entity_is_tolerated_and_named() -> None:
    statuses = {**ALL_PRESENT, "ip_address": MISSING}
    label, reasons = policy().decide(0.1, ROW, statuses)
    assert label == "not_fraud"
    assert "unknown_ip_address" in reasons


def test_two_unknown_entities_are_uncertain() -> None:
    statuses = {"ip_address": MISSING, "card_id": STALE, "merchant_id": PRESENT}
    label, reasons = policy().decide(0.5, ROW, statuses)
    assert label == "uncertain"
    assert reasons[0] == "insufficient_evidence"
    assert {"unknown_ip_address", "stale_features_card_id"} <= set(reasons)


def test_high_score_is_reported_even_on_thin_evidence() -> None:
    statuses = {"ip_address": MISSING, "card_id": MISSING, "merchant_id": PRESENT}
    assert policy().decide(0.95, ROW, statuses)[0] == "highly_suspicious"
    assert policy(report_label_at_or_above="never").decide(0.95, ROW, statuses)[0] == "uncertain"


def test_required_entity() -> None:
    statuses = {**ALL_PRESENT, "card_id": MISSING}
    assert policy(required_entities=["card_id"]).decide(0.1, ROW, statuses)[0] == "uncertain"
    assert policy().decide(0.1, ROW, statuses)[0] == "not_fraud"


def test_stale_may_count_as_known() -> None:
    statuses = {"ip_address": STALE, "card_id": STALE, "merchant_id": PRESENT}
    assert policy(stale_counts_as_unknown=False).decide(0.1, ROW, statuses)[0] == "not_fraud"
    assert policy().decide(0.1, ROW, statuses)[0] == "uncertain"


def test_not_requested_entities_do_not_count() -> None:
    statuses = {"ip_address": PRESENT, "card_id": NOT_REQUESTED, "merchant_id": NOT_REQUESTED}
    assert policy().decide(0.1, ROW, statuses) == ("not_fraud", [])


def test_no_model_answer_is_uncertain() -> None:
    assert policy().decide(None, ROW, ALL_PRESENT) == ("uncertain", ["no_model_answer"])


def test_red_flags_only_on_suspicious_labels() -> None:
    row = np.array([7.0, 20.0, 500.0], dtype=np.float32)
    label, reasons = policy().decide(0.9, row, ALL_PRESENT)
    assert label == "highly_suspicious"
    assert reasons == ["ip_shared_by_many_cards", "amount_far_above_card_usual"]
    assert policy().decide(0.1, row, ALL_PRESENT) == ("not_fraud", [])


def test_unknown_feature_values_raise_no_flag() -> None:
    row = np.array([np.nan, np.nan, 500.0], dtype=np.float32)
    assert policy().decide(0.9, row, ALL_PRESENT) == ("highly_suspicious", [])


STATUSES = [PRESENT, MISSING, STALE, NOT_REQUESTED]
POLICIES = [
    {},
    {"stale_counts_as_unknown": False},
    {"required_entities": ["card_id"]},
    {"report_label_at_or_above": "never"},
    {"report_label_at_or_above": "suspicious", "max_unknown_entities": 0},
]


@pytest.mark.parametrize("n", [4000, 7])
@pytest.mark.parametrize("uncertain", POLICIES)
def test_decide_many_equals_decide_row_by_row(uncertain: dict, n: int) -> None:
    """The vectorized path gives every row the label and reasons decide() gives it."""
    rng = np.random.default_rng(3)
    scores = rng.random(n)
    # Edges and a no-answer value too: exactly at each threshold, just below, NaN.
    scores[:6] = [0.3, math.nextafter(0.3, 0.0), 0.8, math.nextafter(0.8, 0.0), 0.0, math.nan]
    matrix = np.column_stack(
        [rng.integers(0, 6, n), rng.uniform(0, 100, n), rng.uniform(0, 400, n)]
    ).astype(np.float32)
    matrix[rng.random(n) < 0.1, 0] = np.nan  # unknown feature values raise no flag
    statuses = {
        key: rng.choice(STATUSES, n, p=[0.7, 0.12, 0.12, 0.06])
        for key in ("ip_address", "card_id", "merchant_id")
    }
    chosen = policy(**uncertain)
    labels, reasons = chosen.decide_many(scores, matrix, statuses)
    assert len(labels) == len(reasons) == n
    for i in range(n):
        row_status = {key: int(values[i]) for key, values in statuses.items()}
        expected = chosen.decide(float(scores[i]), matrix[i], row_status)
        assert (labels[i], reasons[i]) == expected, (i, scores[i], row_status)
    if n > 100:
        assert set(labels) >= {"not_fraud", "suspicious", "highly_suspicious", "uncertain"}


def test_decide_many_of_nothing() -> None:
    labels, reasons = policy().decide_many(np.empty(0), np.empty((0, 3)), {"card_id": np.empty(0)})
    assert len(labels) == 0 and reasons == []


def test_another_vocabulary_and_optional_evidence() -> None:
    """Credit-like labels; a missing optional entity is named by its declared reason but never
    makes the answer uncertain."""
    credit = LabelPolicy(
        LabelThresholds(manual_review=0.2, decline=0.6),
        UncertainPolicy(
            max_unknown_entities=0, optional_entities=["dob_ssn"], required_entities=["zipcode"]
        ),
        [],
        ["approve", "manual_review", "decline"],
        unknown_reasons={"dob_ssn": "no_credit_history", "zipcode": "unknown_zipcode"},
    )
    present = {"zipcode": PRESENT, "dob_ssn": PRESENT}
    assert credit.decide(0.1, np.empty(0), present) == ("approve", [])
    assert credit.decide(0.7, np.empty(0), present)[0] == "decline"
    no_history = {"zipcode": PRESENT, "dob_ssn": MISSING}
    assert credit.decide(0.3, np.empty(0), no_history) == ("manual_review", ["no_credit_history"])
    no_zip = {"zipcode": MISSING, "dob_ssn": PRESENT}
    assert credit.decide(0.3, np.empty(0), no_zip) == (
        "uncertain",
        ["insufficient_evidence", "unknown_zipcode"],
    )
    labels, _ = credit.decide_many(
        np.array([0.1, 0.3, 0.7] * 20), np.empty((60, 0)), {k: np.zeros(60) for k in present}
    )
    assert labels[:3] == ["approve", "manual_review", "decline"]
