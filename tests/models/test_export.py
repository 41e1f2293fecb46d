"""ONNX export: parity with LightGBM is checked, and a wrong graph is refused."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import onnx
import pytest

from models import export


@pytest.fixture(scope="module")
def booster_and_rows():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 3.0, size=(4000, 6))
    x[:, 0] = rng.poisson(2, size=4000)  # integer counts, as in the feature views
    x[rng.random(x.shape) < 0.1] = np.nan  # unknown entities
    y = ((np.nan_to_num(x[:, 0]) > 3) ^ (rng.random(4000) < 0.05)).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 15, "verbose": -1, "seed": 1},
        lgb.Dataset(x, y),
        num_boost_round=60,
    )
    return booster, x.astype(np.float32)


def test_tree_ensemble_parity(booster_and_rows) -> None:
    booster, rows = booster_and_rows
    graph = export.tree_ensemble_graph(booster, rows.shape[1])
    assert export.check_parity(booster, graph, rows, "rows") <= export.PARITY_TOLERANCE
    planted = export.with_planted_nans(rows)
    assert np.isnan(planted[0]).all()
    assert export.check_parity(booster, graph, planted, "nans") <= export.PARITY_TOLERANCE


def test_standard_graph_parity(booster_and_rows) -> None:
    booster, rows = booster_and_rows
    graph = export.standard_ops_graph(booster)
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)
    assert export.check_parity(booster, graph, export.with_planted_nans(rows), "nans") <= 1e-5


def test_wrong_graph_is_refused(booster_and_rows) -> None:
    booster, rows = booster_and_rows
    graph = export.tree_ensemble_graph(booster, rows.shape[1])
    tampered = onnx.ModelProto()
    tampered.CopyFrom(graph)
    for node in tampered.graph.node:
        for attr in node.attribute:
            if attr.name == "nodes_values":
                attr.floats[0] = attr.floats[0] + 100.0  # move the first split of tree 0
    with pytest.raises(export.ParityError, match="not published"):
        export.check_parity(booster, tampered, rows, "tampered")


def test_single_row_output_shape(booster_and_rows) -> None:
    booster, rows = booster_and_rows
    sess = export.session(export.tree_ensemble_graph(booster, rows.shape[1]))
    assert export.onnx_probability(sess, rows[:1]).shape == (1,)
