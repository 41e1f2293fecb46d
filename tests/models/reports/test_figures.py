"""The reports' figures draw the numbers they are given: planted arrays, read back from the axes."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.image import AxesImage
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve

from models.reports import figures

THRESHOLDS = [("suspicious", 0.3), ("highly_suspicious", 0.7)]


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, np.ndarray]:
    """Planted labels and scores: positives score higher, with overlap."""
    rng = np.random.default_rng(7)
    y = (rng.random(2_000) < 0.1).astype(np.int32)
    scores = np.clip(rng.beta(1.2, 8.0, y.size) + 0.45 * y * rng.random(y.size), 0.0, 1.0)
    return y, scores


def test_png_base64_is_the_figure_as_a_png() -> None:
    fig = figures.calibration(np.array([0, 1] * 50), np.linspace(0.0, 1.0, 100))
    with Image.open(io.BytesIO(base64.b64decode(figures.png_base64(fig)))) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 400 <= width <= 700 and 300 <= height <= 560  # 6.4 x 5.2 in at 96 dpi, trimmed


def test_roc_draws_each_scorer_with_its_auc(holdout: tuple[np.ndarray, np.ndarray]) -> None:
    y, scores = holdout
    rules = (scores > 0.5).astype(np.float64)
    ax = figures.roc(y, [("model", scores), ("rules baseline", rules)]).axes[0]
    model, baseline, diagonal = ax.get_lines()
    fpr, tpr, _ = roc_curve(y, scores)
    np.testing.assert_allclose(model.get_xdata(), fpr)
    np.testing.assert_allclose(model.get_ydata(), tpr)
    assert model.get_label().startswith("model (ROC-AUC 0.")
    assert baseline.get_label().startswith("rules baseline (ROC-AUC ")
    assert list(diagonal.get_xdata()) == [0, 1]


def test_precision_recall_marks_the_model_at_each_threshold(
    holdout: tuple[np.ndarray, np.ndarray],
) -> None:
    y, scores = holdout
    beyond = [*THRESHOLDS, ("never_reached", 1.5)]
    ax = figures.precision_recall(y, [("model", scores), ("other", 1 - scores)], beyond).axes[0]
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(dots) == 2  # no score reaches 1.5: no dot for it
    for dot, (_, threshold) in zip(dots, THRESHOLDS, strict=True):
        above = scores >= threshold
        recall, precision = dot.get_offsets()[0]
        assert recall == pytest.approx(y[above].sum() / y.sum())
        assert precision == pytest.approx(y[above].mean())
    assert ax.get_lines()[-1].get_ydata()[0] == pytest.approx(y.mean())  # the positive rate


def test_calibration_plots_deciles_of_score(holdout: tuple[np.ndarray, np.ndarray]) -> None:
    y, scores = holdout
    curve, perfect = figures.calibration(y, scores).axes[0].get_lines()
    observed, predicted = calibration_curve(y, scores, n_bins=10, strategy="quantile")
    np.testing.assert_allclose(curve.get_xdata(), predicted)
    np.testing.assert_allclose(curve.get_ydata(), observed)
    assert perfect.get_label() == "perfect"


def test_score_histogram_has_both_classes_and_a_line_per_threshold(
    holdout: tuple[np.ndarray, np.ndarray],
) -> None:
    y, scores = holdout
    ax = figures.score_histogram(y, scores, THRESHOLDS).axes[0]
    assert ax.get_yscale() == "log"
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [0.3, 0.7]
    assert [t.get_text() for t in ax.texts] == ["suspicious", "highly_suspicious"]
    assert len(ax.patches) == 2  # one step outline per class
    # Without positives, one class only.
    alone = figures.score_histogram(np.zeros(10, np.int32), np.linspace(0, 0.2, 10), THRESHOLDS)
    assert len(alone.axes[0].patches) == 1


def test_importance_shows_the_top_inputs_as_shares_largest_on_top() -> None:
    gains = {"amount": 50.0, "card_txn_count_24h": 30.0, "ip_fraud_rate_30d": 15.0, "noise": 5.0}
    ax = figures.importance(gains, top=3).axes[0]
    bars = ax.patches
    assert [round(b.get_width(), 6) for b in bars] == [0.15, 0.3, 0.5]  # barh: bottom first
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "ip_fraud_rate_30d",
        "card_txn_count_24h",
        "amount",
    ]


def test_segments_draw_one_panel_per_segment_and_nan_as_zero() -> None:
    rows = [
        {"segment": "amount band", "group": "0-5", "n_rows": 10, "recall": 0.5, "precision": 0.25},
        {"segment": "amount band", "group": ">= 5", "n_rows": 4, "recall": math.nan,
         "precision": math.nan},
        {"segment": "country mismatch", "group": "same", "n_rows": 9, "recall": 1.0,
         "precision": 0.1},
    ]  # fmt: skip
    fig = figures.segments(rows)
    assert [ax.get_title() for ax in fig.axes] == [
        "amount band: at the lowest alerting threshold",
        "country mismatch: at the lowest alerting threshold",
    ]
    bands = fig.axes[0]
    assert [b.get_width() for b in bands.patches] == [0.5, 0.0, 0.25, 0.0]  # recall, precision
    assert [t.get_text() for t in bands.get_yticklabels()] == ["0-5 (10)", ">= 5 (4)"]
    assert len(figures.segments([]).axes) == 1  # an empty panel, not an error


def _day(day: str, pr_auc: float, psi: dict[str, float], holdout_pr_auc: float) -> dict:
    return {
        "day": day,
        "labels": {"suspicious": {"precision": 0.4}},
        "alert": {"recall": 0.6},
        "pr_auc": pr_auc,
        "n_labelled": 50,
        "n_predictions": 100,
        "score_psi": 0.05,
        "features": {name: {"psi": value} for name, value in psi.items()},
        "holdout": {"pr_auc": holdout_pr_auc, "labels": {"suspicious": {"precision": 0.5}}},
    }


def test_daily_performance_draws_each_day_against_the_holdout() -> None:
    days = [_day("2026-03-01", 0.6, {}, 0.7), _day("2026-03-02", 0.4, {}, 0.7)]
    left, right = figures.daily_performance(days).axes
    precision, holdout_precision, recall = left.get_lines()
    assert list(precision.get_ydata()) == [0.4, 0.4]
    assert list(holdout_precision.get_ydata()) == [0.5, 0.5]
    assert list(recall.get_ydata()) == [0.6, 0.6]
    pr_auc, reference = right.get_lines()
    assert list(pr_auc.get_ydata()) == [0.6, 0.4] and reference.get_ydata()[0] == 0.7
    assert [b.get_height() for b in right.patches] == [0.5, 0.5]  # matured share
    # No holdout figures (no package): no reference lines.
    bare = [_day("2026-03-01", 0.6, {}, math.nan)]
    bare[0]["holdout"] = {}
    left, right = figures.daily_performance(bare).axes
    assert len(left.get_lines()) == 2 and len(right.get_lines()) == 1


def test_daily_drift_maps_each_input_and_day_and_the_alert_line() -> None:
    days = [
        _day("2026-03-01", 0.6, {"amount": 0.01, "card_txn_count_24h": 0.02}, 0.7),
        _day("2026-03-02", 0.6, {"amount": 0.9}, 0.7),
    ]
    fig = figures.daily_drift(days, limit=0.2)
    top, bottom = fig.axes[:2]
    assert [line.get_ydata()[0] for line in top.get_lines()] == [0.05, 0.2]
    (image,) = [i for i in bottom.get_images() if isinstance(i, AxesImage)]
    # Rows: inputs in name order; columns: days; an input absent on a day shows 0.
    np.testing.assert_allclose(image.get_array(), [[0.01, 0.9], [0.02, 0.0]])
    assert image.get_clim() == (0.0, 0.9)
    assert len(figures.daily_drift(days, limit=None).axes[0].get_lines()) == 1
