"""The reports' numbers: which labels alert, and how each does per threshold and per segment.

``alerting_labels`` is the one answer to "which labels alert": every label above the lowest of
the vocabulary, lowest risk first, each with the package's cut-off (a score at or above it gets
that label or a riskier one). The training report tabulates them on the holdout, the monitor on
matured labels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_repo.domain import DomainSpec, SegmentSpec
from models import evaluate
from models.package import Manifest


def alerting_labels(
    manifest: Manifest | None, spec: DomainSpec | None = None
) -> list[tuple[str, float]]:
    """The labels that alert, lowest risk first, with their score cut-offs.

    With a package, its thresholds (the manifest guarantees they name every label above the
    lowest, in rising order). Without one, the domain's labels above the lowest, cut-offs
    unknown (NaN); with neither, none.
    """
    if manifest is not None:
        return list(manifest.label_thresholds.cutoffs.items())
    return [(name, math.nan) for name in spec.labels[1:]] if spec is not None else []


def threshold_table(manifest: Manifest, y: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Per alerting label: its score band, alert rate, precision and recall on these rows.

    Band figures (the label exactly) match the manifest's ``<label>_precision``; the
    cumulative ones count every row at or above the label's threshold.
    """
    labels = alerting_labels(manifest)
    positives = max(int(y.sum()), 1)
    rows = []
    for i, (name, low) in enumerate(labels):
        high = labels[i + 1][1] if i + 1 < len(labels) else math.inf
        band = (scores >= low) & (scores < high)
        above = scores >= low
        rows.append(
            {
                "label": name,
                "threshold": low,
                "alert_rate": float(band.mean()) if len(band) else 0.0,
                "precision": float(y[band].mean()) if band.any() else math.nan,
                "recall": float(y[band].sum() / positives),
                "alert_rate_at_or_above": float(above.mean()) if len(above) else 0.0,
                "precision_at_or_above": float(y[above].mean()) if above.any() else math.nan,
                "recall_at_or_above": float(y[above].sum() / positives),
            }
        )
    return rows


@dataclass
class Segment:
    """A way to slice the holdout, usable when the frame has its columns."""

    name: str
    columns: tuple[str, ...]
    groups: Callable[[pd.DataFrame], pd.Series]


def _bands(column: str, edges: list[float]) -> Callable[[pd.DataFrame], pd.Series]:
    labels = [
        f"{lo:g}-{hi:g}" if hi != math.inf else f">= {lo:g}" for lo, hi in itertools.pairwise(edges)
    ]
    return lambda frame: pd.cut(frame[column], bins=edges, right=False, labels=labels)


def _differs(column: str, other: str) -> Callable[[pd.DataFrame], pd.Series]:
    def groups(frame: pd.DataFrame) -> pd.Series:
        differs = frame[column].astype(str) != frame[other].astype(str)
        return pd.Series(
            np.where(differs, f"{column} differs from {other}", f"same {column} and {other}"),
            index=frame.index,
        )

    return groups


def segment(declared: SegmentSpec) -> Segment:
    """A report segment from a domain's declaration: by value, by bins, or same/different."""
    column = declared.field
    if declared.bins is not None:
        return Segment(declared.name, (column,), _bands(column, declared.bins))
    if declared.differs_from is not None:
        other = declared.differs_from
        return Segment(declared.name, (column, other), _differs(column, other))
    return Segment(declared.name, (column,), lambda frame: frame[column].astype(str))


def segment_table(
    segments: list[Segment],
    frame: pd.DataFrame,
    y_true: np.ndarray,
    scores: np.ndarray,
    alert_at: float,
) -> tuple[list[dict], list[str]]:
    """Metrics per segment group, alerting at ``score >= alert_at``; and the segments the
    frame lacks columns for."""
    rows, unavailable = [], []
    for part in segments:
        missing = [c for c in part.columns if c not in frame.columns]
        if missing:
            unavailable.append(f"{part.name} (no column {', '.join(missing)})")
            continue
        series = part.groups(frame)
        if isinstance(series.dtype, pd.CategoricalDtype):  # bands keep their own order
            order = [str(c) for c in series.cat.categories]
        else:
            order = sorted({str(g) for g in series.dropna()})
        groups = series.astype(str).to_numpy()
        for group in order:
            mask = groups == group
            if not mask.any():
                continue
            y, s = y_true[mask], scores[mask]
            alerted = s >= alert_at
            rows.append(
                {
                    "segment": part.name,
                    "group": str(group),
                    "n_rows": int(mask.sum()),
                    "positive_rate": float(y.mean()),
                    "alert_rate": float(alerted.mean()),
                    "precision": float(y[alerted].mean()) if alerted.any() else math.nan,
                    "recall": float(y[alerted].sum() / y.sum()) if y.sum() else math.nan,
                    **{
                        k: v
                        for k, v in evaluate.ranking_metrics(y, s).items()
                        if k in ("pr_auc", "roc_auc")
                    },
                }
            )
    return rows, unavailable
