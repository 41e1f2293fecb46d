"""The reports' figures, each a function of plain arrays and tables returning a matplotlib Figure.

The training report draws six on its holdout rows (ROC, precision-recall, calibration, score
histograms by class, feature importance, metrics per segment); the monitor draws two per model
version and variant (performance and drift by day). ``png_base64`` turns any of them into the
PNG that the pages inline. Figures are built without pyplot: no global state, no display.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from models import evaluate

# A named scorer of the same rows: ("model", scores), ("rules baseline", scores), ...
Curve = tuple[str, np.ndarray]


def png_base64(fig: Figure) -> str:
    """A figure as a base64 PNG, for an ``img`` data URL."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- training report: the holdout rows ----------------------------------------------------------


def roc(y_true: np.ndarray, curves: Sequence[Curve]) -> Figure:
    """ROC curve of each scorer, its ROC-AUC in the legend."""
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.subplots()
    for name, scores in curves:
        fpr, tpr, _ = roc_curve(y_true, scores)
        auc = evaluate.ranking_metrics(y_true, scores)["roc_auc"]
        ax.plot(fpr, tpr, label=f"{name} (ROC-AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, holdout")
    ax.legend(loc="lower right")
    return fig


def precision_recall(
    y_true: np.ndarray, curves: Sequence[Curve], thresholds: Sequence[tuple[str, float]]
) -> Figure:
    """Precision-recall curve of each scorer; a dot where the first (the model) alerts at each
    label's threshold; a dotted line at the positive rate."""
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.subplots()
    for name, scores in curves:
        precision, recall, _ = precision_recall_curve(y_true, scores)
        ap = evaluate.ranking_metrics(y_true, scores)["pr_auc"]
        ax.step(recall, precision, where="post", label=f"{name} (PR-AUC {ap:.3f})")
    model = curves[0][1]
    for name, threshold in thresholds:
        above = model >= threshold
        if above.any():
            ax.scatter(
                [y_true[above].sum() / max(y_true.sum(), 1)],
                [y_true[above].mean()],
                marker="o",
                zorder=3,
                label=f"score >= {name} threshold",
            )
    ax.axhline(y_true.mean(), color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, holdout")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper right", fontsize="small")
    return fig


def calibration(y_true: np.ndarray, scores: np.ndarray) -> Figure:
    """Observed positive rate per decile of score against the decile's mean score."""
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.subplots()
    observed, predicted = calibration_curve(y_true, scores, n_bins=10, strategy="quantile")
    ax.plot(predicted, observed, marker="o", label="model (holdout deciles of score)")
    top = max(float(np.max(predicted)), float(np.max(observed)), 1e-3)
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="perfect")
    ax.set(xlabel="mean predicted score", ylabel="observed positive rate", title="Calibration")
    ax.legend(loc="lower right")  # a rare-event model's curve climbs steeply near the left edge
    return fig


def score_histogram(
    y_true: np.ndarray, scores: np.ndarray, thresholds: Sequence[tuple[str, float]]
) -> Figure:
    """Score densities of each class (log scale), a dashed line at each label's threshold."""
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.subplots()
    # Scores of a rare-event model crowd near zero: bins span the observed range, not [0, 1].
    top = max(float(np.max(scores, initial=0.0)), *(t for _, t in thresholds))
    bins = np.linspace(0.0, min(1.0, top * 1.05) or 1.0, 61).tolist()
    for value, name in ((0, "negative (label 0)"), (1, "positive (label 1)")):
        of_class = scores[y_true == value]
        if of_class.size:
            ax.hist(of_class, bins=bins, histtype="step", density=True, linewidth=1.5, label=name)
    for name, threshold in thresholds:
        ax.axvline(threshold, linestyle="--", linewidth=1, color="black")
        ax.annotate(name, (threshold, 0.98), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize="small")  # fmt: skip
    ax.set_yscale("log")
    ax.set(xlabel="score", ylabel="density (log)", title="Scores by class, holdout")
    ax.legend(loc="upper center")
    return fig


def importance(gains: dict[str, float], top: int) -> Figure:
    """The ``top`` inputs by total split gain, as shares of the total, largest at the top."""
    ranked = sorted(gains.items(), key=lambda kv: kv[1], reverse=True)[:top]
    total = sum(gains.values()) or 1.0
    fig = Figure(figsize=(7.5, 0.28 * len(ranked) + 1.2))
    ax = fig.subplots()
    names = [name for name, _ in ranked][::-1]
    shares = [gain / total for _, gain in ranked][::-1]
    ax.barh(names, shares)
    ax.set(xlabel="share of total split gain", title="Feature importance (gain)")
    ax.tick_params(axis="y", labelsize="small")
    return fig


def segments(rows: list[dict]) -> Figure:
    """Recall and precision per group, one panel per segment (rows of a segment table)."""
    names = list(dict.fromkeys(r["segment"] for r in rows)) or ["(none)"]
    fig = Figure(figsize=(7.5, 2.6 * len(names)))
    axes = np.atleast_1d(fig.subplots(len(names), 1))
    for ax, segment in zip(axes, names, strict=True):
        part = [r for r in rows if r["segment"] == segment]
        y = np.arange(len(part))
        recall = [0.0 if math.isnan(r["recall"]) else r["recall"] for r in part]
        precision = [0.0 if math.isnan(r["precision"]) else r["precision"] for r in part]
        ax.barh(y - 0.2, recall, height=0.4, label="recall")
        ax.barh(y + 0.2, precision, height=0.4, label="precision")
        ax.set_yticks(y, [f"{r['group']} ({r['n_rows']})" for r in part], fontsize="small")
        ax.set_xlim(0, 1)
        ax.set_title(f"{segment}: at the lowest alerting threshold", fontsize="medium")
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


# --- monitor: one model version and variant, day by day ---------------------------------------


def daily_performance(days: list[dict]) -> Figure:
    """Per day: each label's precision (dashed: its holdout precision) and the recall of any
    alert; PR-AUC (dashed: holdout) and the share of answers with a matured label."""
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    x = [g["day"] for g in days]
    for name in days[0]["labels"]:
        line = left.plot(x, [g["labels"][name]["precision"] for g in days], marker="o")[0]
        reference = days[0]["holdout"].get("labels", {}).get(name, {}).get("precision")
        if reference is not None and not math.isnan(reference):
            left.axhline(reference, linestyle="--", color=line.get_color(), linewidth=1)
        line.set_label(f"{name} precision (dashed: holdout)")
    left.plot(x, [g["alert"]["recall"] for g in days], marker="s", label="recall, any alert")
    left.set_ylim(-0.02, 1.02)
    left.set_title("Precision and recall on matured labels")
    left.legend(fontsize="small")
    right.plot(x, [g["pr_auc"] for g in days], marker="o", label="PR-AUC")
    reference = days[0]["holdout"].get("pr_auc")
    if reference is not None and not math.isnan(reference):
        right.axhline(reference, linestyle="--", linewidth=1, label="holdout PR-AUC")
    right.bar(x, [g["n_labelled"] / max(g["n_predictions"], 1) for g in days], alpha=0.3,
              label="share of answers with a matured label")  # fmt: skip
    right.set_ylim(0, 1.02)
    right.set_title("PR-AUC and label coverage")
    right.legend(fontsize="small")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=45, labelsize="small")
    fig.tight_layout()
    return fig


def daily_drift(days: list[dict], limit: float | None) -> Figure:
    """Per day: the score PSI (a red line at ``limit``), and a heat map of each input's PSI."""
    names = sorted({n for g in days for n in g["features"]})
    fig = Figure(figsize=(11, 3.2 + 0.22 * len(names)))
    top, bottom = fig.subplots(2, 1, height_ratios=[1, max(1, len(names) / 8)])
    x = [g["day"] for g in days]
    top.plot(x, [g["score_psi"] for g in days], marker="o", label="score PSI")
    if limit is not None:
        top.axhline(limit, color="red", linestyle="--", linewidth=1, label="alert")
    top.set_title("Score PSI against the holdout score distribution")
    top.legend(fontsize="small")
    if names:
        grid = np.array(
            [[g["features"].get(n, {}).get("psi", math.nan) for g in days] for n in names]
        )
        top_psi = max(0.25, float(np.nanmax(grid, initial=0.0)))
        image = bottom.imshow(
            np.nan_to_num(grid, nan=0.0), aspect="auto", cmap="Reds", vmin=0.0, vmax=top_psi
        )
        bottom.set_yticks(range(len(names)), names, fontsize="x-small")
        bottom.set_xticks(range(len(x)), x, rotation=45, fontsize="small")
        bottom.set_title("Input PSI against the training baseline")
        fig.colorbar(image, ax=bottom)
    fig.tight_layout()
    return fig
