"""Exactness tests for the standard-operator ONNX graph compiled from a LightGBM booster.

The reference is LightGBM itself on the float32 inputs the graph receives, cast to float64.
Besides probabilities, every test compares the leaf reached in every tree with
``booster.predict(..., pred_leaf=True)``, so a single mis-routed row fails even when its leaf
values happen to be close.

Why one module of this length: it is the test of one module (``models/standard_graph.py``), and
its sections share the data builders and the leaf-by-leaf comparison at its end.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime
import pytest

from models.standard_graph import K_ZERO_THRESHOLD, Strategy, compile_booster
from models.thresholds import float32_floor
from tests.models.graph_helpers import predict_reference, session_for

STRATEGIES: tuple[Strategy, ...] = ("gemm", "traversal")
PROBA_TOL = 1e-5
NUM_FEATURES = 6
CPU = ["CPUExecutionProvider"]


# --------------------------------------------------------------------------------------------
# Data and models


def _fraud_like(n: int, rng: np.random.Generator, *, with_nan: bool) -> np.ndarray:
    """Amounts (heavy-tailed), counts (integers), ages, scores, distances (many exact zeros)."""
    x = np.column_stack(
        [
            rng.lognormal(3.0, 1.5, n),  # amount
            rng.poisson(3.0, n).astype(np.float64),  # transactions in the last 24 h
            rng.integers(0, 3000, n).astype(np.float64),  # account age in days
            rng.normal(size=n),  # merchant risk score
            np.where(rng.random(n) < 0.4, 0.0, rng.pareto(1.5, n)),  # distance from home
            rng.normal(size=n),  # velocity ratio
        ]
    )
    if with_nan:
        # Missing values in training for features 0 and 3 only: their splits get missing type
        # "NaN"; the others get "None".
        x[rng.random(n) < 0.10, 0] = np.nan
        x[rng.random(n) < 0.15, 3] = np.nan
    return x


def _labels(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    logit = (
        np.log1p(np.nan_to_num(x[:, 0]))
        - 3.0
        + 0.3 * x[:, 1]
        - 0.0005 * x[:, 2]
        + np.nan_to_num(x[:, 3])
        + 0.5 * (x[:, 4] == 0)
        + 0.5 * x[:, 5]
    )
    return (rng.random(x.shape[0]) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int32)


def _train(params: dict[str, Any], rounds: int = 60, seed: int = 1) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = _fraud_like(4000, rng, with_nan=True)
    base = {
        "objective": "binary",
        "num_leaves": 31,
        "min_data_in_leaf": 10,
        "learning_rate": 0.1,
        "verbose": -1,
        "seed": seed,
        "num_threads": 1,
    }
    return lgb.train({**base, **params}, lgb.Dataset(x, _labels(x, rng)), rounds)


MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "nan_missing": {},  # missing types "NaN" (features seen with NaN) and "None" (the others)
    "zero_as_missing": {"zero_as_missing": True},  # missing type "Zero"
    "no_missing": {"use_missing": False},  # missing type "None" everywhere
}


@pytest.fixture(scope="module")
def boosters() -> dict[str, lgb.Booster]:
    return {name: _train(params) for name, params in MODEL_PARAMS.items()}


@pytest.fixture(scope="module")
def sessions(
    boosters: dict[str, lgb.Booster],
) -> dict[tuple[str, str], onnxruntime.InferenceSession]:
    return {
        (name, strategy): session_for(
            compile_booster(booster, strategy=strategy, leaf_output_name="leaves"), CPU
        )
        for name, booster in boosters.items()
        for strategy in STRATEGIES
    }


def _splits(booster: lgb.Booster) -> Iterator[dict[str, Any]]:
    for info in booster.dump_model()["tree_info"]:
        stack = [info["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_index" in node:
                yield node
                stack += [node["left_child"], node["right_child"]]


def _assert_matches(
    booster: lgb.Booster, session: onnxruntime.InferenceSession, x: np.ndarray
) -> np.ndarray:
    """Run the graph on float32 ``x``; assert leaves equal LightGBM's and probabilities agree."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    proba, leaves = session.run(None, {"features": x32})
    expected_leaves = np.asarray(booster.predict(x32.astype(np.float64), pred_leaf=True))
    np.testing.assert_array_equal(leaves, expected_leaves.reshape(leaves.shape))
    expected = predict_reference(booster, x32)
    assert proba.dtype == np.float32
    assert proba.shape == (x32.shape[0], 2)
    assert float(np.max(np.abs(proba - expected))) <= PROBA_TOL
    return proba


# --------------------------------------------------------------------------------------------
# Graph structure


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_graph_uses_only_standard_domain(
    boosters: dict[str, lgb.Booster], strategy: Strategy
) -> None:
    model = compile_booster(boosters["zero_as_missing"], strategy=strategy)
    onnx.checker.check_model(model, full_check=True)
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    assert not any(node.domain == "ai.onnx.ml" for node in model.graph.node)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [i.name for i in model.graph.input] == ["features"]
    assert [o.name for o in model.graph.output] == ["probabilities"]


def test_missing_types_are_covered(boosters: dict[str, lgb.Booster]) -> None:
    """The trained models exercise every missing type and both default directions."""
    seen = collections.Counter(
        (split["missing_type"], split["default_left"])
        for booster in boosters.values()
        for split in _splits(booster)
    )
    assert {m for m, _ in seen} == {"None", "Zero", "NaN"}
    assert seen[("NaN", True)] and seen[("NaN", False)]
    assert seen[("Zero", True)] and seen[("Zero", False)]


def test_gemm_node_count_does_not_grow_with_trees() -> None:
    small = compile_booster(_train({}, rounds=5))
    large = compile_booster(_train({}, rounds=80))
    # Only the set of input variants (a few preprocessing nodes) may differ.
    assert len(small.graph.node) <= 30 and len(large.graph.node) <= 30


def test_large_model_stays_small() -> None:
    """300 trees x 63 leaves: a couple of MB, and still exact."""
    booster = _train({"num_leaves": 63, "min_data_in_leaf": 5}, rounds=300, seed=3)
    leaves = [info["num_leaves"] for info in booster.dump_model()["tree_info"]]
    assert len(leaves) == 300 and max(leaves) == 63
    model = compile_booster(booster, leaf_output_name="leaves")
    assert model.ByteSize() < 3 * 1024 * 1024
    rng = np.random.default_rng(4)
    _assert_matches(booster, session_for(model, CPU), _fraud_like(2000, rng, with_nan=True))


# --------------------------------------------------------------------------------------------
# Exactness on trained models


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("model", list(MODEL_PARAMS))
def test_ordinary_rows(
    boosters: dict[str, lgb.Booster], sessions: dict[Any, Any], model: str, strategy: Strategy
) -> None:
    rng = np.random.default_rng(10)
    x = _fraud_like(3000, rng, with_nan=False)
    proba = _assert_matches(boosters[model], sessions[model, strategy], x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    # Float64 accumulation: only the final rounding to float32 remains.
    expected = predict_reference(boosters[model], x)
    assert float(np.max(np.abs(proba - expected))) <= 1e-7


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("model", list(MODEL_PARAMS))
def test_nan_in_every_feature(
    boosters: dict[str, lgb.Booster], sessions: dict[Any, Any], model: str, strategy: Strategy
) -> None:
    rng = np.random.default_rng(11)
    x = _fraud_like(3000, rng, with_nan=False)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[:NUM_FEATURES] = np.where(np.eye(NUM_FEATURES, dtype=bool), np.nan, x[:NUM_FEATURES])
    x[NUM_FEATURES] = np.nan  # an all-missing row
    _assert_matches(boosters[model], sessions[model, strategy], x)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("model", list(MODEL_PARAMS))
def test_zeros_and_tiny_values(
    boosters: dict[str, lgb.Booster], sessions: dict[Any, Any], model: str, strategy: Strategy
) -> None:
    """Exact zeros, -0.0 and values around kZeroThreshold (LightGBM maps |x| <= 1e-35 to 0)."""
    specials = np.array(
        [
            0.0,
            -0.0,
            K_ZERO_THRESHOLD,
            -K_ZERO_THRESHOLD,
            np.nextafter(K_ZERO_THRESHOLD, np.float32(1)),
            -np.nextafter(K_ZERO_THRESHOLD, np.float32(1)),
            np.float32(1e-36),
            np.float32(-1e-36),
            np.float32(1e-45),
            np.float32(-1e-45),
        ],
        dtype=np.float32,
    )
    rng = np.random.default_rng(12)
    x = _fraud_like(3000, rng, with_nan=False).astype(np.float32)
    mask = rng.random(x.shape) < 0.4
    x[mask] = rng.choice(specials, size=int(mask.sum()))
    _assert_matches(boosters[model], sessions[model, strategy], x)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("model", list(MODEL_PARAMS))
def test_values_at_thresholds(
    boosters: dict[str, lgb.Booster], sessions: dict[Any, Any], model: str, strategy: Strategy
) -> None:
    """Each split's threshold as float32 (nearest, floor) and the float32 neighbours."""
    booster = boosters[model]
    splits = list(_splits(booster))
    features = np.array([s["split_feature"] for s in splits])
    thresholds = np.array([s["threshold"] for s in splits], dtype=np.float64)
    floor = float32_floor(thresholds)
    with np.errstate(over="ignore"):  # infinite thresholds ("NaN vs. the rest" splits)
        candidates = np.stack(
            [
                thresholds.astype(np.float32),
                floor,
                np.nextafter(floor, np.float32(np.inf)),
                np.nextafter(floor, np.float32(-np.inf)),
            ],
            axis=1,
        )
    rng = np.random.default_rng(13)
    base = _fraud_like(len(splits) * 4, rng, with_nan=True).astype(np.float32)
    rows = np.repeat(np.arange(len(splits)), 4)
    base[np.arange(len(rows)), features[rows]] = candidates.reshape(-1)
    _assert_matches(booster, sessions[model, strategy], base)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_counts_amounts_and_extremes(
    boosters: dict[str, lgb.Booster], sessions: dict[Any, Any], strategy: Strategy
) -> None:
    rng = np.random.default_rng(14)
    x = _fraud_like(4000, rng, with_nan=False)
    x[:, 0] = rng.pareto(0.8, x.shape[0]) * 100.0  # very heavy-tailed amounts
    x[:, 1] = rng.integers(0, 50, x.shape[0])  # integer counts over and beyond the range seen
    x[:500, 0] = 10.0 ** rng.uniform(6, 30, 500)
    x[500:600] = np.inf
    x[600:700] = -np.inf
    x[700:800, 1] = np.float32(np.finfo(np.float32).max)
    for model in MODEL_PARAMS:
        _assert_matches(boosters[model], sessions[model, strategy], x)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_sizes(
    boosters: dict[str, lgb.Booster], sessions: dict[Any, Any], strategy: Strategy
) -> None:
    rng = np.random.default_rng(15)
    big = _fraud_like(10_000, rng, with_nan=True)
    booster, session = boosters["nan_missing"], sessions["nan_missing", strategy]
    for x in (big[:1], big[1:2], big):
        proba = _assert_matches(booster, session, x)
        assert proba.shape == (x.shape[0], 2)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Hand-written models: every decision type against every edge value


def _model_string(trees: list[str], num_features: int) -> str:
    names = " ".join(f"f{i}" for i in range(num_features))
    infos = " ".join("[-1:1]" for _ in range(num_features))
    body = "\n\n".join(trees)
    return (
        "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n"
        f"max_feature_idx={num_features - 1}\nobjective=binary sigmoid:1\n"
        f"feature_names={names}\nfeature_infos={infos}\n\n{body}\n\nend of trees\n\n"
        "parameters:\nend of parameters\n\npandas_categorical:null\n"
    )


def _stump(index: int, feature: int, threshold: float, decision_type: int) -> str:
    value = 0.01 * (index + 1)
    return (
        f"Tree={index}\nnum_leaves=2\nnum_cat=0\nsplit_feature={feature}\nsplit_gain=1\n"
        f"threshold={threshold!r}\ndecision_type={decision_type}\nleft_child=-1\n"
        f"right_child=-2\nleaf_value={value!r} {-value!r}\nleaf_weight=1 1\nleaf_count=1 1\n"
        "internal_value=0\ninternal_weight=2\ninternal_count=2\nis_linear=0\nshrinkage=1\n"
    )


def _constant_tree(index: int, value: float) -> str:
    return (
        f"Tree={index}\nnum_leaves=1\nnum_cat=0\nsplit_feature=\nsplit_gain=\nthreshold=\n"
        f"decision_type=\nleft_child=\nright_child=\nleaf_value={value!r}\nleaf_weight=\n"
        "leaf_count=\ninternal_value=\ninternal_weight=\ninternal_count=\nis_linear=0\n"
        "shrinkage=1\n"
    )


def _chain_tree(index: int, num_leaves: int) -> str:
    """A maximally deep tree: split i sends x <= i to leaf i and the rest on to split i + 1."""
    splits = num_leaves - 1

    def join(values: list[Any]) -> str:
        return " ".join(str(v) for v in values)

    right = [i + 1 for i in range(splits - 1)] + [-num_leaves]
    return (
        f"Tree={index}\nnum_leaves={num_leaves}\nnum_cat=0\nsplit_feature={join([0] * splits)}\n"
        f"split_gain={join([1] * splits)}\nthreshold={join([float(i) for i in range(splits)])}\n"
        f"decision_type={join([10] * splits)}\nleft_child={join([~i for i in range(splits)])}\n"
        f"right_child={join(right)}\n"
        f"leaf_value={join([0.001 * i for i in range(num_leaves)])}\n"
        f"leaf_weight={join([1] * num_leaves)}\nleaf_count={join([1] * num_leaves)}\n"
        f"internal_value={join([0] * splits)}\ninternal_weight={join([1] * splits)}\n"
        f"internal_count={join([1] * splits)}\nis_linear=0\nshrinkage=1\n"
    )


def test_deep_trees() -> None:
    """A 300-level chain (NaN missing type, default left) next to a stump."""
    trees = [_chain_tree(0, 301), _stump(1, 1, 0.5, 2)]
    booster = lgb.Booster(model_str=_model_string(trees, num_features=2))
    rng = np.random.default_rng(32)
    x = rng.uniform(-5, 305, size=(2000, 2))
    x[::7, 0] = np.round(x[::7, 0])  # exactly on thresholds
    x[::11, 0] = np.nan
    for strategy in STRATEGIES:
        model = compile_booster(booster, strategy=strategy, leaf_output_name="leaves")
        _assert_matches(booster, session_for(model, CPU), x)


def _heap_tree(index: int, num_leaves: int) -> str:
    """A balanced tree: split i has children 2i+1 and 2i+2 (leaves once past the splits)."""
    splits = num_leaves - 1

    def child(c: int) -> int:
        return c if c < splits else ~(c - splits)

    def join(values: list[Any]) -> str:
        return " ".join(str(v) for v in values)

    return (
        f"Tree={index}\nnum_leaves={num_leaves}\nnum_cat=0\nsplit_feature={join([0] * splits)}\n"
        f"split_gain={join([1] * splits)}\nthreshold={join([0.5] * splits)}\n"
        f"decision_type={join([2] * splits)}\n"
        f"left_child={join([child(2 * i + 1) for i in range(splits)])}\n"
        f"right_child={join([child(2 * i + 2) for i in range(splits)])}\n"
        f"leaf_value={join([0.001 * i for i in range(num_leaves)])}\n"
        f"leaf_weight={join([1] * num_leaves)}\nleaf_count={join([1] * num_leaves)}\n"
        f"internal_value={join([0] * splits)}\ninternal_weight={join([1] * splits)}\n"
        f"internal_count={join([1] * splits)}\nis_linear=0\nshrinkage=1\n"
    )


def test_gemm_leaf_limit() -> None:
    booster = lgb.Booster(model_str=_model_string([_heap_tree(0, 2049)], num_features=1))
    with pytest.raises(ValueError, match="traversal"):
        compile_booster(booster, strategy="gemm")


EDGE_THRESHOLDS = [
    float(K_ZERO_THRESHOLD),
    -float(K_ZERO_THRESHOLD),
    0.0,
    0.5,
    -0.5,
    0.1,  # not a float32
    -0.1,
    2.5000000000000004,
    1e-300,  # below the smallest float32 subnormal
    -1e-300,
    1e200,  # beyond float32
    -1e200,
    np.inf,  # LightGBM's threshold for "NaN vs. the rest" splits
    -np.inf,
    float(np.finfo(np.float32).max),
]


def _edge_inputs() -> np.ndarray:
    f32 = np.float32
    base: list[float] = [
        np.nan,
        0.0,
        -0.0,
        1e-36,
        -1e-36,
        1e-45,
        -1e-45,
        1.0,
        -1.0,
        np.inf,
        -np.inf,
        float(np.finfo(f32).max),
        -float(np.finfo(f32).max),
        1e30,
        -1e30,
    ]
    values = [f32(v) for v in base]
    for t in EDGE_THRESHOLDS:
        with np.errstate(over="ignore"):
            nearest = f32(t)
            values += [nearest, np.nextafter(nearest, f32(np.inf))]
            values += [np.nextafter(nearest, f32(-np.inf))]
    return np.array(values, dtype=np.float32)


@pytest.fixture(scope="module")
def edge_booster() -> lgb.Booster:
    trees: list[str] = []
    for missing_type in (0, 1, 2):  # None, Zero, NaN
        for default_left in (False, True):
            for threshold in EDGE_THRESHOLDS:
                decision_type = (missing_type << 2) | (2 if default_left else 0)
                trees.append(_stump(len(trees), len(trees) % 2, threshold, decision_type))
    trees.append(_constant_tree(len(trees), 0.125))
    return lgb.Booster(model_str=_model_string(trees, num_features=2))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_decision_type_on_edge_values(edge_booster: lgb.Booster, strategy: Strategy) -> None:
    values = _edge_inputs()
    # Every pair of edge values, so each stump sees each value on its feature.
    x = np.stack(np.meshgrid(values, values, indexing="ij"), axis=-1).reshape(-1, 2)
    model = compile_booster(edge_booster, strategy=strategy, leaf_output_name="leaves")
    _assert_matches(edge_booster, session_for(model, CPU), x)


def test_small_values_are_zero_for_lightgbm(edge_booster: lgb.Booster) -> None:
    """The predictor drops |x| <= kZeroThreshold: -1e-35 is not <= the threshold -1e-35."""
    below = -np.nextafter(K_ZERO_THRESHOLD, np.float32(1))
    x = np.array([[-K_ZERO_THRESHOLD] * 2, [below] * 2], dtype=np.float32).astype(np.float64)
    tree = EDGE_THRESHOLDS.index(-float(K_ZERO_THRESHOLD))  # missing type None, default right
    leaves = np.asarray(edge_booster.predict(x, pred_leaf=True))
    assert leaves[0, tree] == 1  # read as 0.0, and 0.0 > -1e-35
    assert leaves[1, tree] == 0


# --------------------------------------------------------------------------------------------
# Iterations, averaging, other objectives


def _train_with_valid() -> lgb.Booster:
    rng = np.random.default_rng(20)
    x = _fraud_like(3000, rng, with_nan=True)
    y = _labels(x, rng)
    train = lgb.Dataset(x[:2000], y[:2000])
    valid = lgb.Dataset(x[2000:], y[2000:], reference=train)
    params = {
        "objective": "binary",
        "num_leaves": 63,
        "learning_rate": 0.3,
        "verbose": -1,
        "num_threads": 1,
    }
    return lgb.train(
        params,
        train,
        200,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(3, verbose=False)],
        # Otherwise train() re-loads the model truncated to best_iteration.
        keep_training_booster=True,
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_best_iteration_is_used(strategy: Strategy) -> None:
    booster = _train_with_valid()
    assert 0 < booster.best_iteration < booster.num_trees()
    model = compile_booster(booster, strategy=strategy, leaf_output_name="leaves")
    session = session_for(model, CPU)
    rng = np.random.default_rng(21)
    x = _fraud_like(1000, rng, with_nan=True)
    _assert_matches(booster, session, x)
    leaves = session.run(["leaves"], {"features": x.astype(np.float32)})[0]
    assert leaves.shape == (1000, booster.best_iteration)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_random_forest_average_output(strategy: Strategy) -> None:
    booster = _train(
        {"boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.7, "feature_fraction": 0.8},
        rounds=20,
    )
    assert booster.dump_model()["average_output"]
    model = compile_booster(booster, strategy=strategy, leaf_output_name="leaves")
    rng = np.random.default_rng(22)
    _assert_matches(booster, session_for(model, CPU), _fraud_like(1000, rng, with_nan=True))


def test_sigmoid_parameter() -> None:
    booster = _train({"sigmoid": 0.5}, rounds=20)
    assert booster.dump_model()["objective"] == "binary sigmoid:0.5"
    model = compile_booster(booster, leaf_output_name="leaves")
    rng = np.random.default_rng(23)
    _assert_matches(booster, session_for(model, CPU), _fraud_like(1000, rng, with_nan=True))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"objective": "multiclass", "num_class": 3}, "binary"),
        ({"objective": "regression"}, "binary"),
        ({"objective": "cross_entropy"}, "binary"),
        ({"linear_tree": True}, "linear"),
    ],
)
def test_unsupported_models_raise(params: dict[str, Any], message: str) -> None:
    rng = np.random.default_rng(30)
    x = _fraud_like(500, rng, with_nan=False)
    y = rng.integers(0, 3 if params.get("num_class") else 2, 500)
    base = {"objective": "binary", "num_leaves": 4, "verbose": -1, "num_threads": 1}
    booster = lgb.train({**base, **params}, lgb.Dataset(x, y), 2)
    with pytest.raises(ValueError, match=message):
        compile_booster(booster)


def test_categorical_splits_raise() -> None:
    rng = np.random.default_rng(31)
    category = rng.integers(0, 8, 2000)
    x = np.column_stack([category, rng.normal(size=2000)]).astype(np.float64)
    y = (np.isin(category, [1, 4, 6]) ^ (rng.random(2000) < 0.1)).astype(int)
    params = {
        "objective": "binary",
        "num_leaves": 4,
        "verbose": -1,
        "num_threads": 1,
        "min_data_per_group": 10,
    }
    booster = lgb.train(params, lgb.Dataset(x, y, categorical_feature=[0]), 3)
    assert any(s["decision_type"] == "==" for s in _splits(booster))
    with pytest.raises(ValueError, match="categorical"):
        compile_booster(booster)


def test_old_opset_raises(boosters: dict[str, lgb.Booster]) -> None:
    with pytest.raises(ValueError, match="opset"):
        compile_booster(boosters["nan_missing"], opset=12)


# --------------------------------------------------------------------------------------------
# Same contract as the onnxmltools TreeEnsemble graph


def test_same_layout_as_tree_ensemble_graph(
    boosters: dict[str, lgb.Booster], sessions: dict[Any, Any]
) -> None:
    onnxmltools = pytest.importorskip("onnxmltools")
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = boosters["nan_missing"]
    # onnxmltools 1.16 rejects the dict form of target_opset and any opset above 15.
    reference = onnxmltools.convert_lightgbm(
        booster,
        initial_types=[("features", FloatTensorType([None, NUM_FEATURES]))],
        zipmap=False,
        target_opset=15,
    )
    assert any(node.domain == "ai.onnx.ml" for node in reference.graph.node)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # its "label" output declares a wrong static shape
    tree_ensemble = onnxruntime.InferenceSession(
        reference.SerializeToString(), sess_options=options, providers=CPU
    )
    ours = compile_booster(booster)

    ref_out = next(o for o in reference.graph.output if o.name == "probabilities")
    our_out = ours.graph.output[0]
    assert our_out.name == ref_out.name
    assert our_out.type.tensor_type.elem_type == ref_out.type.tensor_type.elem_type
    assert our_out.type.tensor_type.shape.dim[1].dim_value == 2
    assert ref_out.type.tensor_type.shape.dim[1].dim_value == 2

    rng = np.random.default_rng(40)
    x = _fraud_like(2000, rng, with_nan=False).astype(np.float32)
    expected = tree_ensemble.run(["probabilities"], {"features": x})[0]
    got = session_for(ours, CPU).run(["probabilities"], {"features": x})[0]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert float(np.max(np.abs(got - expected))) <= PROBA_TOL


# --------------------------------------------------------------------------------------------
# Helpers


def test_session_for_defaults(boosters: dict[str, lgb.Booster]) -> None:
    session = session_for(compile_booster(boosters["nan_missing"]))
    assert session.get_providers()[-1] == "CPUExecutionProvider"
    expected = (
        ["CUDAExecutionProvider"]
        if "CUDAExecutionProvider" in (onnxruntime.get_available_providers())
        else []
    )
    assert session.get_providers()[:-1] == expected


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_runs_entirely_on_cuda(boosters: dict[str, lgb.Booster], strategy: Strategy) -> None:
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu with the CUDA execution provider is not installed")
    booster = boosters["zero_as_missing"]
    model = compile_booster(booster, strategy=strategy, leaf_output_name="leaves")
    options = onnxruntime.SessionOptions()
    # Session creation fails if any node would be placed on the CPU provider.
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = onnxruntime.InferenceSession(
        model.SerializeToString(),
        sess_options=options,
        # CUDA alone: ONNX Runtime >= 1.31 refuses the CPU provider next to disabled fallback.
        providers=["CUDAExecutionProvider"],
    )
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    rng = np.random.default_rng(60)
    x = _fraud_like(5000, rng, with_nan=True)
    x[rng.random(x.shape) < 0.2] = 0.0
    _assert_matches(booster, session, x)
