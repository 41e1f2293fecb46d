"""Evaluation on planted scores: ranking metrics, the baselines, thresholds by the domain's
rule (on validation rows), and the per-label figures the manifest records."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from feature_repo.domain import Reason, ThresholdRule, load_domain
from models.evaluate import (
    choose_thresholds,
    decision_tree_baseline,
    label_counts,
    ranking_metrics,
    rules_baseline,
    score_quantiles,
)
from tests.conftest import ROOT

FRAUD = load_domain(ROOT / "feature_repo" / "fraud")


def rule(**targets: tuple[float, float]) -> ThresholdRule:
    return ThresholdRule.model_validate(
        {
            "targets": {
                label: {"min_precision": p, "fallback_quantile": q}
                for label, (p, q) in targets.items()
            }
        }
    )


def test_ranking_metrics_of_perfect_reversed_and_one_class_rankings() -> None:
    y = np.array([0, 0, 1, 1])
    assert ranking_metrics(y, np.array([0.1, 0.2, 0.8, 0.9])) == {"roc_auc": 1.0, "pr_auc": 1.0}
    assert ranking_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]))["roc_auc"] == 0.0
    one_class = ranking_metrics(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]))
    assert all(math.isnan(v) for v in one_class.values())


def test_the_rules_baseline_counts_the_red_flags_that_hold() -> None:
    frame = pd.DataFrame(
        {
            "ip_distinct_cards_24h": [5.0, 0.0, np.nan, 3.0],
            "card_distinct_countries_24h": [2.0, 0.0, 3.0, 0.0],
            "card_distinct_ips_24h": [9.0, 9.0, 9.0, 9.0],  # a reason kept out of the baseline
            "amount": [900.0, 10.0, 600.0, 50.0],
            "card_amount_mean_30d": [100.0, np.nan, np.nan, 20.0],
        }
    )
    score = rules_baseline(frame, FRAUD.reasons)
    # Row 0: many cards on the IP, several countries, amount > 3x usual.
    # Row 1: nothing (a new card, but a small amount). Row 2: several countries, and a large
    # amount on a card without history; the unknown IP count holds no flag. Row 3: three cards.
    assert score.tolist() == [3.0, 0.0, 2.0, 1.0]
    only = [Reason.model_validate({"code": "x", "text": "x", "when": "amount > 100"})]
    assert rules_baseline(frame.drop(columns="amount"), only).tolist() == [0.0] * 4


def test_the_decision_tree_learns_a_planted_rule() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2_000, 3))
    y = (x[:, 1] > 0.7).astype(int)
    scores = decision_tree_baseline(x[:1_500], y[:1_500], x[1_500:], seed=1)
    assert ranking_metrics(y[1_500:], scores)["roc_auc"] > 0.99
    np.testing.assert_array_equal(
        scores, decision_tree_baseline(x[:1_500], y[:1_500], x[1_500:], 1)
    )


def test_thresholds_reach_their_precision_target_at_the_lowest_score() -> None:
    # Scores 0.00 .. 0.99: every row from 0.80 on is positive, plus one at 0.50.
    scores = np.arange(100) / 100
    y = (scores >= 0.8).astype(int)
    y[50] = 1
    chosen = choose_thresholds(
        y, scores, rule(suspicious=(0.5, 0.9), highly_suspicious=(1.0, 0.99))
    )
    # Above 0.5, score >= t holds 100 - 100 t rows and 20 positives: precision 0.5 from 0.60 on;
    # at or below 0.5 (21 positives in 50 rows or more) it never reaches 0.5.
    assert chosen["suspicious"] == pytest.approx(0.6)
    assert chosen["highly_suspicious"] == pytest.approx(0.8)
    assert list(chosen) == ["suspicious", "highly_suspicious"]


def test_an_unreachable_target_falls_back_to_its_quantile_under_the_riskier_label() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(10_000)
    y = (rng.random(10_000) < 0.01).astype(int)  # scores say nothing: no precision reaches 0.9
    chosen = choose_thresholds(
        y, scores, rule(suspicious=(0.9, 0.99), highly_suspicious=(0.95, 0.9))
    )
    assert chosen["highly_suspicious"] == pytest.approx(np.quantile(scores, 0.9))
    # The lower label's own fallback (0.99) would exceed the riskier one's: it is capped.
    assert chosen["suspicious"] == chosen["highly_suspicious"]


def test_label_counts_are_the_figures_of_exactly_each_label() -> None:
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.5, 0.75, 0.8, 0.95])
    y = np.array([0, 0, 0, 1, 0, 1, 1, 0])
    counts = label_counts(scores, y, {"suspicious": 0.3, "highly_suspicious": 0.7})
    assert counts["suspicious_share"] == pytest.approx(3 / 8)
    assert counts["suspicious_precision"] == pytest.approx(1 / 3)
    assert counts["suspicious_recall"] == pytest.approx(1 / 3)
    assert counts["highly_suspicious_share"] == pytest.approx(3 / 8)
    assert counts["highly_suspicious_precision"] == pytest.approx(2 / 3)
    assert counts["highly_suspicious_recall"] == pytest.approx(2 / 3)
    empty = label_counts(scores, y, {"suspicious": 0.99, "highly_suspicious": 0.999})
    assert math.isnan(empty["suspicious_precision"]) and empty["suspicious_share"] == 0.0


def test_score_quantiles_name_their_levels() -> None:
    quantiles = score_quantiles(np.linspace(0.0, 1.0, 1_001))
    assert list(quantiles)[:3] == ["q0.01", "q0.05", "q0.1"] and "q0.999" in quantiles
    assert quantiles["q0.5"] == pytest.approx(0.5)
    assert all(math.isnan(v) for v in score_quantiles(np.array([])).values())
