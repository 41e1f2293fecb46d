"""Evaluation: ranking metrics, a rules baseline to beat, and label thresholds.

Threshold rule (precision-driven, chosen on the validation split, never on the holdout):
``highly_suspicious`` is the lowest score whose validation precision reaches
``HIGH_PRECISION`` (0.80), ``suspicious`` the lowest reaching ``SUSPICIOUS_PRECISION`` (0.30).
Precision is what an analyst queue pays for: a label that is mostly wrong gets ignored. Where a
target cannot be reached, the threshold falls back to a score quantile (top 0.5 % / top 3 %) so
the labels still mean "rarest scores".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

HIGH_PRECISION = 0.80
SUSPICIOUS_PRECISION = 0.30
HIGH_FALLBACK_QUANTILE = 0.995
SUSPICIOUS_FALLBACK_QUANTILE = 0.97
THRESHOLD_RULE = (
    f"validation split: highly_suspicious = lowest score with precision >= {HIGH_PRECISION}, "
    f"suspicious = lowest score with precision >= {SUSPICIOUS_PRECISION}; quantile fallback "
    f"{HIGH_FALLBACK_QUANTILE}/{SUSPICIOUS_FALLBACK_QUANTILE} where a target is unreachable"
)


def ranking_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC-AUC and PR-AUC (average precision); NaN when only one class is present."""
    if len(np.unique(y_true)) < 2:
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return {
        "roc_auc": float(roc_auc_score(y_true, scores)),
        "pr_auc": float(average_precision_score(y_true, scores)),
    }


def rules_baseline(frame: pd.DataFrame) -> np.ndarray:
    """A hand-written rule score of the kind fraud teams start with: one point per red flag."""

    def flag(column: str, predicate) -> np.ndarray:
        values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            return np.where(np.isnan(values), 0.0, predicate(values).astype(np.float64))

    amount = frame["amount"].to_numpy(dtype=np.float64)
    card_mean = frame["card_amount_mean_30d"].to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        big_amount = np.where(np.isnan(card_mean), amount > 500.0, amount > 3.0 * card_mean)
    return (
        flag("ip_distinct_cards_24h", lambda v: v >= 3)
        + flag("card_distinct_countries_24h", lambda v: v >= 2)
        + flag("card_small_txn_count_24h", lambda v: v >= 3)
        + flag("merchant_fraud_rate_30d", lambda v: v > 0.05)
        + flag("ip_fraud_rate_30d", lambda v: v > 0.05)
        + big_amount.astype(np.float64)
    )


def _lowest_threshold_with_precision(
    y_true: np.ndarray, scores: np.ndarray, target: float
) -> float | None:
    precision, _, thresholds = precision_recall_curve(y_true, scores)
    # precision[i] is the precision of "score >= thresholds[i]"; the last entry has no threshold.
    reached = np.flatnonzero(precision[:-1] >= target)
    if reached.size == 0:
        return None
    return float(thresholds[reached[0]])


def choose_thresholds(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Label thresholds from the validation split (see the module docstring for the rule)."""
    high = _lowest_threshold_with_precision(y_true, scores, HIGH_PRECISION)
    if high is None:
        high = float(np.quantile(scores, HIGH_FALLBACK_QUANTILE))
    suspicious = _lowest_threshold_with_precision(y_true, scores, SUSPICIOUS_PRECISION)
    if suspicious is None:
        suspicious = float(np.quantile(scores, SUSPICIOUS_FALLBACK_QUANTILE))
    return {"suspicious": min(suspicious, high), "highly_suspicious": high}


def label_counts(scores: np.ndarray, y_true: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Share of rows and precision per label at the chosen thresholds."""
    out: dict[str, float] = {}
    high = scores >= thresholds["highly_suspicious"]
    suspicious = (scores >= thresholds["suspicious"]) & ~high
    for name, mask in (("highly_suspicious", high), ("suspicious", suspicious)):
        out[f"{name}_share"] = float(mask.mean()) if len(mask) else 0.0
        out[f"{name}_precision"] = float(y_true[mask].mean()) if mask.any() else float("nan")
        out[f"{name}_recall"] = (
            float(y_true[mask].sum() / max(y_true.sum(), 1)) if len(mask) else 0.0
        )
    return out


def score_quantiles(scores: np.ndarray) -> dict[str, float]:
    """Baseline score distribution kept in the manifest, for drift checks in serving."""
    qs = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999]
    values = np.quantile(scores, qs) if len(scores) else np.full(len(qs), np.nan)
    return {f"q{q:g}": float(v) for q, v in zip(qs, values, strict=True)}
