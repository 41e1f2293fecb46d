"""Drift baselines of the package format: bins, counted shares, PSI, the score baseline."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluate import score_quantiles
from models.package import (
    FeatureBaseline,
    bin_counts,
    feature_baseline,
    psi,
    score_baseline,
    score_bins,
)


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
