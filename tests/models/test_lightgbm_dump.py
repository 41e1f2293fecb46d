"""Reading a LightGBM booster's trees from ``dump_model()``: walking the parsed arrays gives
LightGBM's own raw scores, and what cannot be read exactly is refused by name."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from models.lightgbm_dump import (
    MISSING_NAN,
    MISSING_NONE,
    MISSING_ZERO,
    Forest,
    Tree,
    num_iteration,
    parse_booster,
    split_thresholds,
    tree_split_thresholds,
)


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.lognormal(3.0, 1.0, n),
            rng.poisson(2.0, n).astype(np.float64),
            np.where(rng.random(n) < 0.4, 0.0, rng.normal(size=n)),  # many exact zeros
            rng.normal(size=n),
        ]
    )
    x[rng.random(x.shape) < 0.15] = np.nan  # unknown entities
    return x


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = _rows(3_000, 0)
    signal = np.nan_to_num(x[:, 1]) + (np.nan_to_num(x[:, 0]) > 40) + np.isnan(x[:, 3])
    y = (signal + np.random.default_rng(1).normal(0, 0.8, len(x)) > 2.5).astype(int)
    return x, y


def _train(x: np.ndarray, y: np.ndarray, **params: object) -> lgb.Booster:
    base = {"objective": "binary", "num_leaves": 15, "verbose": -1, "seed": 2}
    return lgb.train({**base, **params}, lgb.Dataset(x, y), num_boost_round=25)


def _goes_left(tree: Tree, node: int, x: float) -> bool:
    """LightGBM's numerical decision (``Tree::NumericalDecision``)."""
    kind = tree.missing_type[node]
    if np.isnan(x) and kind != MISSING_NAN:
        x = 0.0
    if (kind == MISSING_ZERO and x == 0.0) or (kind == MISSING_NAN and np.isnan(x)):
        return bool(tree.default_left[node])
    return bool(x <= tree.threshold[node])


def _raw(forest: Forest, rows: np.ndarray) -> np.ndarray:
    """Raw scores from the parsed arrays alone."""
    out = np.zeros(len(rows))
    for tree in forest.trees:
        for i, row in enumerate(rows):
            node = 0 if tree.num_internal else ~0
            while node >= 0:
                go_left = _goes_left(tree, node, row[tree.feature[node]])
                node = int(tree.left[node] if go_left else tree.right[node])
            out[i] += tree.leaf_value[~node]
    return out


@pytest.mark.parametrize("missing", ["nan", "zero", "none"])
def test_the_parsed_trees_score_as_lightgbm(
    data: tuple[np.ndarray, np.ndarray], missing: str
) -> None:
    x, y = data
    params = {"nan": {}, "zero": {"zero_as_missing": True}, "none": {"use_missing": False}}[missing]
    booster = _train(x, y, **params)
    forest = parse_booster(booster)
    assert forest.num_features == 4 and len(forest.trees) == booster.num_trees()
    assert forest.sigmoid == 1.0 and not forest.average_output
    kinds = {int(k) for tree in forest.trees for k in tree.missing_type}
    expected_kind = {"nan": MISSING_NAN, "zero": MISSING_ZERO, "none": MISSING_NONE}[missing]
    assert expected_kind in kinds
    rows = _rows(400, 5)
    np.testing.assert_allclose(
        _raw(forest, rows), booster.predict(rows, raw_score=True), rtol=1e-12, atol=1e-12
    )


def test_leaf_paths_lead_to_their_leaves(data: tuple[np.ndarray, np.ndarray]) -> None:
    tree = parse_booster(_train(*data)).trees[0]
    paths = tree.leaf_paths()
    assert len(paths) == tree.num_leaves == tree.num_internal + 1
    for leaf, path in enumerate(paths):
        node = 0
        for step, (at, went_left) in enumerate(path):
            assert at == node, (leaf, step)
            node = int(tree.left[at] if went_left else tree.right[at])
        assert node == ~leaf


def test_early_stopping_keeps_the_best_iteration(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 31, "learning_rate": 0.5, "verbose": -1},
        lgb.Dataset(x[:2_000], y[:2_000]),
        num_boost_round=200,
        valid_sets=[lgb.Dataset(x[2_000:], y[2_000:])],
        callbacks=[lgb.early_stopping(5, verbose=False)],
        keep_training_booster=True,  # keeps the trees after the best iteration too
    )
    best = num_iteration(booster)
    assert best is not None and best == booster.best_iteration < booster.num_trees()
    assert len(parse_booster(booster).trees) == best
    assert num_iteration(_train(x, y)) is None


def test_split_thresholds_are_the_dumped_thresholds_per_feature(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    booster = _train(*data)
    thresholds = split_thresholds(booster)
    forest = parse_booster(booster)
    parsed: dict[int, list[float]] = {}
    for tree in forest.trees:
        for feature, threshold in zip(tree.feature, tree.threshold, strict=True):
            parsed.setdefault(int(feature), []).append(float(threshold))
    assert set(thresholds) == set(parsed)
    for feature, values in thresholds.items():
        assert sorted(values) == sorted(parsed[feature])


def test_tree_split_thresholds_are_each_trees_thresholds(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    booster = _train(*data)
    per_tree = tree_split_thresholds(booster)
    forest = parse_booster(booster)
    assert len(per_tree) == len(forest.trees) > 1
    for thresholds, tree in zip(per_tree, forest.trees, strict=True):
        parsed: dict[int, list[float]] = {}
        for feature, threshold in zip(tree.feature, tree.threshold, strict=True):
            parsed.setdefault(int(feature), []).append(float(threshold))
        assert {f: sorted(v) for f, v in thresholds.items()} == {
            f: sorted(v) for f, v in parsed.items()
        }


def test_other_objectives_are_refused_by_name(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    with pytest.raises(ValueError, match="only the 'binary' objective is supported"):
        parse_booster(_train(x, y.astype(float), objective="regression"))
    with pytest.raises(ValueError, match="only the 'binary' objective is supported"):
        parse_booster(_train(x, y % 3, objective="multiclass", num_class=3))


def test_categorical_splits_are_refused(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    x = x.copy()
    x[:, 1] = np.nan_to_num(x[:, 1])
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "min_data_per_group": 5, "cat_smooth": 1},
        lgb.Dataset(x, y, categorical_feature=[1]),
        num_boost_round=5,
    )
    with pytest.raises(ValueError, match="categorical splits"):
        parse_booster(booster)


def test_a_constant_model_has_one_leaf_trees() -> None:
    x = np.random.default_rng(3).random((200, 2))
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "min_data_in_leaf": 500},
        lgb.Dataset(x, (x[:, 0] > 0.5).astype(int)),
        num_boost_round=3,
    )
    forest = parse_booster(booster)
    assert all(tree.num_internal == 0 and tree.num_leaves == 1 for tree in forest.trees)
    rows = x[:10]
    np.testing.assert_allclose(_raw(forest, rows), booster.predict(rows, raw_score=True))
