"""Evaluation: ranking metrics, baselines to beat, and label thresholds by the declared rule.

Thresholds follow the domain's ``threshold_rule`` (``feature_repo.domain.ThresholdRule``), on the
validation split, never on the holdout: with ``precision_targets``, each label above the lowest
starts at the lowest score whose validation precision reaches its ``min_precision``; where no
score reaches it, at its ``fallback_quantile`` of the validation scores, so the label still
means "rarest scores". A label's threshold never exceeds the next riskier label's.

Two baselines: the rules baseline scores one point per red flag the domain declares (its
``reasons`` with ``baseline: true``); the decision tree is one unpruned scikit-learn tree on
the model's own inputs and split, the model of the Feast tutorial the second domain's data
comes from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.tree import DecisionTreeClassifier

from feature_repo.domain import Reason, ThresholdRule


def ranking_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC-AUC and PR-AUC (average precision); NaN when only one class is present."""
    if len(np.unique(y_true)) < 2:
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return {
        "roc_auc": float(roc_auc_score(y_true, scores)),
        "pr_auc": float(average_precision_score(y_true, scores)),
    }


def rules_baseline(frame: pd.DataFrame, reasons: Sequence[Reason]) -> np.ndarray:
    """A hand-written rule score of the kind risk teams start with: one point per red flag.

    Counts the reasons declared for the baseline whose inputs the frame has; a condition on a
    missing value does not hold.
    """
    score = np.zeros(len(frame), dtype=np.float64)
    for reason in reasons:
        if reason.baseline and all(f in frame.columns for f in reason.features):
            columns = {
                f: frame[f].to_numpy(dtype=np.float64, na_value=np.nan) for f in reason.features
            }
            score += reason.holds(columns)
    return score


def decision_tree_baseline(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, seed: int
) -> np.ndarray:
    """Scores of one unpruned decision tree fitted on the training split (missing: NaN)."""
    tree = DecisionTreeClassifier(random_state=seed)
    tree.fit(x_train, y_train)
    return np.asarray(tree.predict_proba(x_eval)[:, 1], dtype=np.float64)


def _lowest_threshold_with_precision(
    y_true: np.ndarray, scores: np.ndarray, target: float
) -> float | None:
    precision, _, thresholds = precision_recall_curve(y_true, scores)
    # precision[i] is the precision of "score >= thresholds[i]"; the last entry has no threshold.
    reached = np.flatnonzero(precision[:-1] >= target)
    if reached.size == 0:
        return None
    return float(thresholds[reached[0]])


def choose_thresholds(
    y_true: np.ndarray, scores: np.ndarray, rule: ThresholdRule
) -> dict[str, float]:
    """Label -> threshold on the validation split by the rule, lowest risk first."""
    chosen: dict[str, float] = {}
    for label, target in rule.targets.items():
        value = _lowest_threshold_with_precision(y_true, scores, target.min_precision)
        if value is None:
            value = float(np.quantile(scores, target.fallback_quantile))
        chosen[label] = value
    # A label's threshold never exceeds the next riskier one's (that label would never be given).
    ceiling = np.inf
    for label in reversed(list(chosen)):
        chosen[label] = ceiling = min(chosen[label], ceiling)
    return chosen


def label_counts(scores: np.ndarray, y_true: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Per label above the lowest: share of rows, precision and recall of exactly that label."""
    out: dict[str, float] = {}
    cutoffs = np.asarray(list(thresholds.values()), dtype=np.float64)
    ranks = np.searchsorted(cutoffs, np.asarray(scores, dtype=np.float64), side="right")
    positives = max(float(y_true.sum()), 1.0)
    for rank, name in enumerate(thresholds, start=1):
        mask = ranks == rank
        out[f"{name}_share"] = float(mask.mean()) if len(mask) else 0.0
        out[f"{name}_precision"] = float(y_true[mask].mean()) if mask.any() else float("nan")
        out[f"{name}_recall"] = float(y_true[mask].sum() / positives) if len(mask) else 0.0
    return out


def score_quantiles(scores: np.ndarray) -> dict[str, float]:
    """Baseline score distribution kept in the manifest, for drift checks in serving."""
    qs = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999]
    values = np.quantile(scores, qs) if len(scores) else np.full(len(qs), np.nan)
    return {f"q{q:g}": float(v) for q, v in zip(qs, values, strict=True)}
