"""Post-process: score -> business label, with reasons a person can read.

Thresholds and the "uncertain" policy come from the model package. Reasons name the red flags
visible in the features (for suspicious labels) and every evidence gap (unknown or stale entity).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.package import LabelThresholds, UncertainPolicy
from scoring_service.features import MISSING, STALE

# Red flags: (reason code, features it needs, predicate on {feature: value}).
RedFlag = tuple[str, tuple[str, ...], Callable[[dict[str, float]], bool]]
RED_FLAGS: list[RedFlag] = [
    (
        "ip_shared_by_many_cards",
        ("ip_distinct_cards_24h",),
        lambda f: f["ip_distinct_cards_24h"] >= 3,
    ),
    ("ip_has_chargebacks", ("ip_fraud_rate_30d",), lambda f: f["ip_fraud_rate_30d"] > 0.05),
    (
        "card_used_from_several_countries",
        ("card_distinct_countries_24h",),
        lambda f: f["card_distinct_countries_24h"] >= 2,
    ),
    (
        "card_used_from_several_ips",
        ("card_distinct_ips_24h",),
        lambda f: f["card_distinct_ips_24h"] >= 3,
    ),
    (
        "card_testing_pattern",
        ("card_small_txn_count_24h",),
        lambda f: f["card_small_txn_count_24h"] >= 3,
    ),
    (
        "merchant_with_high_fraud_rate",
        ("merchant_fraud_rate_30d",),
        lambda f: f["merchant_fraud_rate_30d"] > 0.05,
    ),
    (
        "amount_far_above_card_usual",
        ("amount", "card_amount_mean_30d"),
        lambda f: f["card_amount_mean_30d"] > 0 and f["amount"] > 3 * f["card_amount_mean_30d"],
    ),
]

RANK = {"not_fraud": 0, "suspicious": 1, "highly_suspicious": 2}


@dataclass(frozen=True)
class LabelPolicy:
    """Thresholds + uncertain policy of one model package."""

    thresholds: LabelThresholds
    uncertain: UncertainPolicy
    features: list[str]

    def score_label(self, score: float) -> str:
        """Label from the score alone (>= threshold gets the label)."""
        if score >= self.thresholds.highly_suspicious:
            return "highly_suspicious"
        if score >= self.thresholds.suspicious:
            return "suspicious"
        return "not_fraud"

    def __post_init__(self) -> None:
        # The model's columns are fixed per package: resolve which red flags apply, and where
        # their features sit, once rather than on every suspicious answer.
        index = {name: i for i, name in enumerate(self.features)}
        applicable = [
            (code, tuple((n, index[n]) for n in needs), predicate)
            for code, needs, predicate in RED_FLAGS
            if all(n in index for n in needs)
        ]
        object.__setattr__(self, "_flags", applicable)

    def red_flags(self, row: np.ndarray) -> list[str]:
        """Reason codes whose features are known and whose predicate holds."""
        out = []
        for code, columns, predicate in self._flags:  # type: ignore[attr-defined]
            values = {name: float(row[i]) for name, i in columns}
            if any(np.isnan(v) for v in values.values()):
                continue
            if predicate(values):
                out.append(code)
        return out

    def decide(
        self,
        score: float | None,
        row: np.ndarray,
        statuses: dict[str, int],
    ) -> tuple[str, list[str]]:
        """Label and reasons for one request; statuses maps join key -> entity status."""
        gaps: list[str] = []
        unknown: list[str] = []
        for key, status in statuses.items():
            if status == MISSING:
                gaps.append(f"unknown_{key}")
                unknown.append(key)
            elif status == STALE:
                gaps.append(f"stale_features_{key}")
                if self.uncertain.stale_counts_as_unknown:
                    unknown.append(key)
        if score is None:
            return "uncertain", ["no_model_answer", *gaps]
        label = self.score_label(score)
        thin = len(unknown) > self.uncertain.max_unknown_entities or any(
            key in unknown for key in self.uncertain.required_entities
        )
        if thin:
            floor = self.uncertain.report_label_at_or_above
            if floor == "never" or RANK[label] < RANK[floor]:
                return "uncertain", ["insufficient_evidence", *gaps]
        reasons = self.red_flags(row) if label != "not_fraud" else []
        return label, reasons + gaps
