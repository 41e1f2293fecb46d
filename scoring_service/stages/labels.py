"""Post-process: score -> business label, with reasons a person can read.

The label vocabulary, thresholds and the "uncertain" policy come from the model package; the red
flags and the reason code of each unknown entity come from the domain's declaration
(``feature_repo/<domain>/domain.yaml``). Reasons name the red flags visible in the features (for
labels above the lowest) and every evidence gap (unknown or stale entity).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from feature_repo.domain import DomainSpec, Reason
from models.package import LabelThresholds, Manifest, UncertainPolicy
from scoring_service.stages.features import MISSING, STALE

VECTOR_MIN_ROWS = 32
"""From this many rows on, ``decide_many`` works on arrays."""


@dataclass(frozen=True)
class LabelPolicy:
    """Thresholds, label vocabulary and uncertain policy of one model package, with the
    domain's declared reasons (red flags) and the reason code of each unknown entity."""

    thresholds: LabelThresholds
    uncertain: UncertainPolicy
    features: list[str]
    labels: Sequence[str]  # the domain's vocabulary, lowest risk first
    uncertain_label: str = "uncertain"
    reasons: Sequence[Reason] = ()  # red flags given with labels above the lowest
    unknown_reasons: Mapping[str, str] = field(default_factory=dict)  # join key -> reason code

    def __post_init__(self) -> None:
        # The model's columns are fixed per package: resolve which red flags apply, and where
        # their features sit, once rather than on every risky answer.
        index = {name: i for i, name in enumerate(self.features)}
        applicable = [
            (reason, {name: index[name] for name in reason.features})
            for reason in self.reasons
            if all(name in index for name in reason.features)
        ]
        object.__setattr__(self, "_flags", applicable)
        object.__setattr__(self, "_rank", {label: i for i, label in enumerate(self.labels)})
        object.__setattr__(self, "_edges", list(self.thresholds.cutoffs.values()))

    @classmethod
    def for_package(cls, manifest: Manifest, domain: DomainSpec | None) -> LabelPolicy:
        """The policy of a package, with its domain's reasons when the domain is known."""
        return cls(
            thresholds=manifest.label_thresholds,
            uncertain=manifest.uncertain_policy,
            features=list(manifest.features),
            labels=list(manifest.labels),
            uncertain_label=manifest.uncertain_label,
            reasons=domain.reasons_for(manifest.features, report=True) if domain else (),
            unknown_reasons=(
                {e.join_key: e.unknown_reason for e in domain.entities.values()} if domain else {}
            ),
        )

    def score_label(self, score: float) -> str:
        """Label from the score alone (at or above a cut-off gets that label)."""
        rank = 0
        for i, edge in enumerate(self._edges):  # type: ignore[attr-defined]
            if score >= edge:
                rank = i + 1
        return self.labels[rank]

    def red_flags(self, row: np.ndarray) -> list[str]:
        """Reason codes whose features are known and whose conditions hold."""
        out = []
        for reason, columns in self._flags:  # type: ignore[attr-defined]
            values = {name: np.array([row[i]], dtype=np.float64) for name, i in columns.items()}
            if bool(reason.holds(values)[0]):
                out.append(reason.code)
        return out

    def _evidence(self, statuses: Mapping[str, int]) -> tuple[list[str], bool]:
        """(evidence gaps as reasons, whether the evidence is too thin) for one row's statuses."""
        gaps: list[str] = []
        unknown: list[str] = []
        optional = self.uncertain.optional_entities
        for key, status in statuses.items():
            if status == MISSING:
                gaps.append(self.unknown_reasons.get(key, f"unknown_{key}"))
                if key not in optional:
                    unknown.append(key)
            elif status == STALE:
                gaps.append(f"stale_features_{key}")
                if self.uncertain.stale_counts_as_unknown and key not in optional:
                    unknown.append(key)
        thin = len(unknown) > self.uncertain.max_unknown_entities or any(
            key in unknown for key in self.uncertain.required_entities
        )
        return gaps, thin

    def _below_floor(self, rank: int) -> bool:
        floor = self.uncertain.report_label_at_or_above
        return floor == "never" or rank < self._rank.get(floor, len(self.labels))  # type: ignore[attr-defined]

    def decide(
        self,
        score: float | None,
        row: np.ndarray,
        statuses: dict[str, int],
    ) -> tuple[str, list[str]]:
        """Label and reasons for one request; statuses maps join key -> entity status."""
        gaps, thin = self._evidence(statuses)
        if score is None:
            return self.uncertain_label, ["no_model_answer", *gaps]
        label = self.score_label(score)
        rank = self._rank[label]  # type: ignore[attr-defined]
        if thin and self._below_floor(rank):
            return self.uncertain_label, ["insufficient_evidence", *gaps]
        reasons = self.red_flags(row) if rank > 0 else []
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
        # NaN reaches no cut-off, as in score_label (searchsorted would put it past them all).
        rank = np.where(np.isnan(scores), 0, self.thresholds.ranks(scores))
        floor = self.uncertain.report_label_at_or_above
        ranks: dict[str, int] = self._rank  # type: ignore[attr-defined]
        floor_rank = len(self.labels) if floor == "never" else ranks.get(floor, len(self.labels))
        below_floor = rank < floor_rank
        uncertain = thin_of[inverse] & below_floor
        named = np.array(list(self.labels), dtype=object)[rank]
        named[uncertain] = self.uncertain_label
        labels: list[str] = named.tolist()
        flagged = (rank > 0) & ~uncertain
        flags = self._red_flags_many(matrix, np.flatnonzero(flagged))
        reasons: list[list[str]] = []
        for p, is_uncertain, has_flags in zip(
            inverse.tolist(), uncertain.tolist(), flagged.tolist(), strict=True
        ):
            gaps = gaps_of[p]
            if is_uncertain:
                reasons.append(["insufficient_evidence", *gaps])
            elif has_flags:
                reasons.append(next(flags) + gaps)
            else:
                reasons.append(list(gaps))
        return labels, reasons

    def _red_flags_many(self, matrix: np.ndarray, rows: np.ndarray) -> Iterator[list[str]]:
        """``red_flags(matrix[i])`` for each i of ``rows``, in order: each flag's conditions
        evaluated once over the columns of those rows (float64, as ``red_flags`` reads them)."""
        if len(rows) == 0:
            return iter(())
        picked = np.asarray(matrix)[rows]
        raised: list[tuple[str, list[bool]]] = []
        for reason, columns in self._flags:  # type: ignore[attr-defined]
            values = {name: picked[:, i].astype(np.float64) for name, i in columns.items()}
            raised.append((reason.code, np.asarray(reason.holds(values), dtype=bool).tolist()))
        if not raised:
            return iter([[] for _ in range(len(rows))])
        codes = [code for code, _ in raised]
        return (
            [code for code, hit in zip(codes, hits, strict=True) if hit]
            for hits in zip(*(column for _, column in raised), strict=True)
        )
