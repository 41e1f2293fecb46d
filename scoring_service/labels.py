"""Post-process: score -> business label, with reasons a person can read.

Thresholds and the "uncertain" policy come from the model package. Reasons name the red flags
visible in the features (for suspicious labels) and every evidence gap (unknown or stale entity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
LABEL_NAMES = ("not_fraud", "suspicious", "highly_suspicious")  # by rank
VECTOR_MIN_ROWS = 32
"""From this many rows on, ``decide_many`` works on arrays."""


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

    def _evidence(self, statuses: Mapping[str, int]) -> tuple[list[str], bool]:
        """(evidence gaps as reasons, whether the evidence is too thin) for one row's statuses."""
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
        thin = len(unknown) > self.uncertain.max_unknown_entities or any(
            key in unknown for key in self.uncertain.required_entities
        )
        return gaps, thin

    def decide(
        self,
        score: float | None,
        row: np.ndarray,
        statuses: dict[str, int],
    ) -> tuple[str, list[str]]:
        """Label and reasons for one request; statuses maps join key -> entity status."""
        gaps, thin = self._evidence(statuses)
        if score is None:
            return "uncertain", ["no_model_answer", *gaps]
        label = self.score_label(score)
        if thin:
            floor = self.uncertain.report_label_at_or_above
            if floor == "never" or RANK[label] < RANK[floor]:
                return "uncertain", ["insufficient_evidence", *gaps]
        reasons = self.red_flags(row) if label != "not_fraud" else []
        return label, reasons + gaps

    def decide_many(
        self,
        scores: np.ndarray,
        matrix: np.ndarray,
        statuses: Mapping[str, np.ndarray],
    ) -> tuple[list[str], list[list[str]]]:
        """``decide`` for n rows at once: labels and reasons, row by row equal to
        ``decide(scores[i], matrix[i], {key: statuses[key][i]})``.

        Labels come from array comparisons. Evidence gaps depend only on a row's statuses, so
        they are worked out once per distinct status pattern (a handful per batch); red flags,
        which only suspicious labels carry, are looked at for those rows alone. A few rows (a
        micro-batch) go through ``decide`` itself: numpy's per-call cost would outweigh them.
        """
        n = len(scores)
        keys = list(statuses)
        if n < VECTOR_MIN_ROWS:
            columns = {key: np.asarray(statuses[key]).tolist() for key in keys}
            decided = [
                self.decide(score, matrix[i], {key: columns[key][i] for key in keys})
                for i, score in enumerate(np.asarray(scores, dtype=np.float64).tolist())
            ]
            return [label for label, _ in decided], [reasons for _, reasons in decided]
        # One pattern code per row: the statuses (each < 8) as base-8 digits, in key order.
        codes = np.zeros(n, dtype=np.int64)
        for key in keys:
            codes = codes * 8 + np.asarray(statuses[key], dtype=np.int64)
        patterns, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        gaps_of: list[list[str]] = []
        thin_of = np.zeros(len(patterns), dtype=bool)
        for p, row in enumerate(first.tolist()):
            gaps, thin_of[p] = self._evidence({key: int(statuses[key][row]) for key in keys})
            gaps_of.append(gaps)
        scores = np.asarray(scores, dtype=np.float64)
        rank = np.where(
            scores >= self.thresholds.highly_suspicious,
            2,
            np.where(scores >= self.thresholds.suspicious, 1, 0),
        )
        floor = self.uncertain.report_label_at_or_above
        below_floor = np.ones(n, dtype=bool) if floor == "never" else rank < RANK[floor]
        uncertain = thin_of[inverse] & below_floor
        named = np.array(LABEL_NAMES, dtype=object)[rank]
        named[uncertain] = "uncertain"
        labels: list[str] = named.tolist()
        reasons: list[list[str]] = []
        flagged = ((rank > 0) & ~uncertain).tolist()
        for i, (p, is_uncertain, has_flags) in enumerate(
            zip(inverse.tolist(), uncertain.tolist(), flagged, strict=True)
        ):
            gaps = gaps_of[p]
            if is_uncertain:
                reasons.append(["insufficient_evidence", *gaps])
            elif has_flags:
                reasons.append(self.red_flags(matrix[i]) + gaps)
            else:
                reasons.append(list(gaps))
        return labels, reasons
