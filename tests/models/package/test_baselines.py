"""Drift baselines of the package format: bins, counted shares, PSI, the score baseline."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluate import score_quantiles
from models.package import (
    PSI_EPSILON,
    FeatureBaseline,
    bin_counts,
    feature_baseline,
    psi,
    score_baseline,
    score_bins,
    score_reference,
)
from tests.models.package_helpers import toy_manifest

# PSI above this is a significant shift (the monitor's and the service's default alert).
SIGNIFICANT = 0.2


def test_a_discrete_feature_gets_its_counted_shares() -> None:
    rng = np.random.default_rng(0)
    values = rng.choice([0.0, 1.0, 2.0, 7.0], p=[0.7, 0.2, 0.05, 0.05], size=10_000)
    values[:500] = np.nan
    baseline = feature_baseline(values.astype(np.float32))
    assert baseline.missing_rate == pytest.approx(0.05)
    assert baseline.edges == sorted(set(baseline.edges))  # deciles deduplicated
    present = values[~np.isnan(values)]
    expected = bin_counts(present, baseline.edges) / present.size
    assert baseline.proportions == pytest.approx(expected.tolist())
    # A value equal to an edge belongs to the bin that starts there.
    assert bin_counts(np.array([baseline.edges[0]]), baseline.edges).tolist().index(1.0) == 1


def test_psi_is_zero_for_the_baseline_itself_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(3.0, 1.0, 50_000)
    baseline = feature_baseline(values)
    same = psi(baseline.proportions, bin_counts(values, baseline.edges))
    assert same == pytest.approx(0.0, abs=1e-12)
    fresh = psi(baseline.proportions, bin_counts(rng.lognormal(3.0, 1.0, 5_000), baseline.edges))
    assert fresh < 0.01
    tripled = psi(baseline.proportions, bin_counts(values[:5_000] * 3.0, baseline.edges))
    assert tripled > 1.0
    assert np.isnan(psi(baseline.proportions, np.zeros(len(baseline.proportions))))


def test_an_all_missing_feature_has_one_bin() -> None:
    baseline = feature_baseline(np.full(10, np.nan))
    assert baseline == FeatureBaseline(edges=[], proportions=[1.0], missing_rate=1.0, n_rows=10)


def test_float32_scores_of_the_served_graph_stay_in_their_training_bins() -> None:
    # A fraud model's scores pile up: a third of the rows share the lowest score exactly.
    rng = np.random.default_rng(2)
    scores = np.concatenate(
        [np.full(3_000, 0.01562902341033641), 0.0157 + rng.beta(0.6, 12.0, 6_000)]
    )
    reference = score_bins(scores)
    assert sum(reference.proportions) == pytest.approx(1.0)
    # Counted: nothing lies below the pile, which the quantile levels alone cannot tell.
    assert reference.proportions[0] == 0.0 and reference.proportions[1] >= 1 / 3
    # What the service sees: float32 answers, within the ONNX parity tolerance of LightGBM.
    served = scores.astype(np.float32).astype(np.float64) - 2e-6
    assert psi(reference.proportions, bin_counts(served, reference.edges)) < 1e-3


def test_older_packages_compare_scores_with_bins_from_their_quantiles() -> None:
    scores = np.random.default_rng(3).beta(0.6, 12.0, 20_000)  # no ties
    reference = score_baseline(score_quantiles(scores))
    assert reference is not None and sum(reference.proportions) == pytest.approx(1.0)
    assert psi(reference.proportions, bin_counts(scores, reference.edges)) < 0.01


def test_psi_of_identical_distributions_is_zero_and_of_a_shift_above_the_alert() -> None:
    expected = [0.1, 0.2, 0.4, 0.2, 0.1]
    assert psi(expected, np.array([10.0, 20.0, 40.0, 20.0, 10.0])) == 0.0
    assert psi(expected, np.array([1.0, 2.0, 4.0, 2.0, 1.0]) * 1000) == pytest.approx(0.0)
    # A mean shift of one standard deviation, binned on the training deciles.
    rng = np.random.default_rng(4)
    baseline = feature_baseline(rng.normal(0.0, 1.0, 20_000))
    shifted = bin_counts(rng.normal(1.0, 1.0, 5_000), baseline.edges)
    assert psi(baseline.proportions, shifted) > SIGNIFICANT
    calm = bin_counts(rng.normal(0.0, 1.0, 5_000), baseline.edges)
    assert psi(baseline.proportions, calm) < 0.05


def test_an_empty_bin_weighs_heavily_but_finitely() -> None:
    value = psi([0.5, 0.5, 0.0], np.array([0.0, 50.0, 50.0]))
    assert np.isfinite(value)
    # The half that moved into the empty bin alone: (0.5 - eps) * ln(0.5 / eps).
    assert value > (0.5 - PSI_EPSILON) * np.log(0.5 / PSI_EPSILON)


def test_bin_counts_ignore_missing_values_and_close_bins_on_the_left() -> None:
    counts = bin_counts(np.array([np.nan, -1.0, 0.0, 0.5, 1.0, 9.0, np.nan]), [0.0, 1.0])
    assert counts.tolist() == [1.0, 2.0, 2.0]


def test_served_scores_are_compared_with_the_counted_bins_else_the_quantiles() -> None:
    counted = score_bins(np.random.default_rng(5).beta(0.6, 12.0, 5_000))
    quantiles = {"q0.5": 0.02, "q0.9": 0.1}
    assert score_reference(toy_manifest(baseline_score_bins=counted)) == counted
    older = score_reference(toy_manifest(baseline_score_distribution=quantiles))
    assert older is not None and older.proportions == pytest.approx([0.5, 0.4, 0.1])
    assert older.edges == pytest.approx([0.02 - 1e-5, 0.1 - 1e-5])
    assert score_reference(toy_manifest()) is None  # no scores kept: no score drift
