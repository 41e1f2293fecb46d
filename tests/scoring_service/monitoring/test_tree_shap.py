"""TreeSHAP over the package's LightGBM model text equals LightGBM's own contributions, and the
contributions sum to the raw score."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from scoring_service.monitoring.tree_shap import TreeEnsemble, top_contributions


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 6))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take the default branches
    x[:, 5] = np.where(rng.random(3000) < 0.3, 0.0, x[:, 5])  # zeros for zero-as-missing splits
    logit = 1.5 * np.nan_to_num(x[:, 0]) - np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2])
    y = (rng.random(3000) < 1 / (1 + np.exp(-logit))).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "seed": 1}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=40)


def test_contributions_equal_lightgbms_and_sum_to_the_raw_score(booster: lgb.Booster) -> None:
    ensemble = TreeEnsemble.from_lightgbm_text(booster.model_to_string())
    rng = np.random.default_rng(9)
    rows = rng.normal(size=(40, 6))
    rows[rng.random(rows.shape) < 0.2] = np.nan
    rows[::7, 5] = 0.0
    expected = booster.predict(rows, pred_contrib=True)
    raw = booster.predict(rows, raw_score=True)
    for i, row in enumerate(rows):
        phi = ensemble.contributions(row)
        np.testing.assert_allclose(phi, expected[i, :-1], atol=1e-9)
        assert abs(ensemble.expected_value() - expected[i, -1]) < 1e-9
        assert abs(phi.sum() + ensemble.expected_value() - raw[i]) < 1e-6
        assert abs(ensemble.raw_score(row) - raw[i]) < 1e-9


def test_top_contributions_are_ordered_by_size() -> None:
    top = top_contributions(["a", "b", "c"], [1.0, float("nan"), 3.0], np.array([0.1, -2, 0.5]), 2)
    assert [(c.feature, c.value) for c in top] == [("b", None), ("c", 3.0)]
