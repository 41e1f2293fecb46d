"""What scoring produces: the outcome of one request (``Scored``), or of n requests column by
column (``ScoredColumns``, the batch path's form). The scorer makes them; the API answers with
them and the prediction log records them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from scoring_service.core.schemas import EntityFreshness
from scoring_service.stages.features import STATUS_NAMES

V = TypeVar("V")

OFF_LOOP_ROWS = 256
"""Above this many requests in one call, decoding and the model call move off the event loop,
so other requests keep flowing."""


@dataclass
class Scored:
    """The outcome for one request."""

    score: float | None
    label: str
    reasons: list[str]
    freshness: dict[str, EntityFreshness]
    variant: str = "champion"  # the variant or fallback step that decided
    model_version: str = ""  # `name/version` of the package (or `ensemble:<name>`)
    inputs: np.ndarray | None = None  # the model's input row, for the prediction log
    input_names: Sequence[str] | None = None  # its names when not the direct path's model's


@dataclass
class ScoredColumns:
    """The outcomes of n requests, column by column (Python lists, ready for JSON)."""

    scores: list[float]
    labels: list[str]
    reasons: list[list[str]]
    status: dict[str, list[int]]  # join key -> n entity statuses (feature_repo.online codes)
    age_seconds: dict[str, list[float]]  # join key -> n row ages (NaN: no row)
    variants: list[str] | None = None  # who decided each row (None: the champion, all rows)
    model_versions: list[str] | None = None
    default_version: str = ""
    # [n, features] model input (the direct path's model), or per row the input row of the
    # package that decided it (None: no model answered) with its names in ``input_names``
    inputs: np.ndarray | list[np.ndarray | None] | None = None
    input_names: list[Sequence[str]] | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def freshness(self, make: Callable[[int, float | None], V]) -> list[dict[str, V]]:
        """Per request, join key -> ``make(status, age)`` (age in seconds rounded to ms, None
        without a row); one ``make`` per distinct pair, shared by the rows that have it
        (snapshots are hourly: many rows share their age)."""
        seen: dict[tuple[int, float], V] = {}
        columns = [(key, self.status[key], self.age_seconds[key]) for key in self.status]
        out = []
        for i in range(len(self.scores)):
            row = {}
            for key, statuses, ages in columns:
                status, age = statuses[i], ages[i]
                cache_key = (status, age if age == age else -1.0)  # NaN is not a usable key
                made = seen.get(cache_key)
                if made is None:
                    made = seen[cache_key] = make(status, None if age != age else round(age, 3))
                row[key] = made
            out.append(row)
        return out

    def rows(self) -> list[Scored]:
        """One ``Scored`` per request."""
        freshness = self.freshness(_entity_freshness)
        n = len(self.scores)
        variants = self.variants or ["champion"] * n
        versions = self.model_versions or [self.default_version] * n
        inputs = self.inputs if self.inputs is not None else [None] * n
        names: Sequence[Sequence[str] | None] = self.input_names or [None] * n
        return [
            Scored(score, label, reasons, fresh, variant, version, row, row_names)
            for score, label, reasons, fresh, variant, version, row, row_names in zip(
                self.scores,
                self.labels,
                self.reasons,
                freshness,
                variants,
                versions,
                inputs,
                names,
                strict=True,
            )
        ]


def _entity_freshness(status: int, age: float | None) -> EntityFreshness:
    # Built from known-valid values: no validation (model_construct is several times cheaper).
    return EntityFreshness.model_construct(status=STATUS_NAMES[status], age_seconds=age)
