"""The candidate's model time as the ``predict_time_per_row`` gate measures it: real ONNX Runtime
sessions of planted LightGBM models, one with a hundred times the other's trees."""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np
import pandas as pd

from models import export
from orchestration.evaluation import Scored, predict_seconds_per_row


def scored(rounds: int, rows: np.ndarray, labels: np.ndarray) -> Scored:
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 31, "min_data_in_leaf": 5, "verbose": -1},
        lgb.Dataset(rows, labels),
        num_boost_round=rounds,
    )
    graph = export.tree_ensemble_graph(booster, rows.shape[1])
    return Scored(pd.DataFrame(), export.session(graph), rows)


def test_a_model_of_many_more_trees_measures_slower_per_row_and_an_empty_window_is_nan() -> None:
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(600, 12)).astype(np.float32)
    labels = (rows[:, 0] + rng.normal(scale=0.5, size=600) > 0).astype(int)
    small, large = scored(3, rows, labels), scored(300, rows, labels)
    empty = Scored(pd.DataFrame(), small.session, rows[:0])
    per_row = predict_seconds_per_row([large, small, empty], batch=32, repeats=3, rows=400)
    assert per_row[0] > 0 and per_row[1] > 0
    assert per_row[0] > 2 * per_row[1], per_row
    assert math.isnan(per_row[2])
