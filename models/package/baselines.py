"""Drift baselines: feature and score distributions of the training data, and PSI against them.

Training computes them once (``feature_baseline`` per input on the training split, ``score_bins``
on the holdout scores) and writes them into the manifest; the service's drift gauges and the
offline monitor (``models.monitor``) bin what they see with ``bin_counts`` on the same edges and
compare with ``psi``: one binning and one PSI on both sides.
"""

from __future__ import annotations

import numpy as np

from models.package.manifest import FeatureBaseline, Manifest

# Bin edges of a feature baseline: deciles of the training split.
BASELINE_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Proportions are floored at this before the PSI's logarithm, so an empty bin on either side
# contributes a large but finite term.
PSI_EPSILON = 1e-4
# Bin edges of the score baseline: deciles, and the tail where the alerting labels live.
SCORE_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
# Score bin edges sit this far below the holdout quantiles. The served graphs answer in float32
# and within the ONNX parity tolerance of LightGBM's float64 scores, and a rare-event model's scores
# pile up on a few values (a quarter of them can equal the lowest quantile): without the margin,
# those rows would fall just below an edge and fake a drift.
SCORE_EDGE_TOLERANCE = 1e-5


def feature_baseline(values: np.ndarray) -> FeatureBaseline:
    """Baseline of one input column: decile edges, counted bin shares and missing rate."""
    column = np.asarray(values, dtype=np.float64)
    present = column[~np.isnan(column)]
    if present.size == 0:
        return FeatureBaseline(edges=[], proportions=[1.0], missing_rate=1.0, n_rows=column.size)
    edges = np.unique(np.quantile(present, BASELINE_QUANTILES))
    counts = bin_counts(present, edges)
    return FeatureBaseline(
        edges=edges.tolist(),
        proportions=(counts / present.size).tolist(),
        missing_rate=float(1.0 - present.size / column.size),
        n_rows=int(column.size),
    )


def bin_counts(values: np.ndarray, edges: np.ndarray | list[float]) -> np.ndarray:
    """Counts of non-missing values per bin ``[e_i-1, e_i)`` (NaN values are ignored)."""
    edges = np.asarray(edges, dtype=np.float64)
    column = np.asarray(values, dtype=np.float64)
    column = column[~np.isnan(column)]
    return np.bincount(
        np.searchsorted(edges, column, side="right"), minlength=edges.size + 1
    ).astype(np.float64)


def psi(expected: np.ndarray | list[float], actual_counts: np.ndarray) -> float:
    """Population stability index of observed bin counts against expected proportions.

    ``sum((a - e) * ln(a / e))`` with both shares floored at ``PSI_EPSILON``; NaN when nothing
    was observed. Rule of thumb: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant.
    """
    counts = np.asarray(actual_counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPSILON)
    a = np.maximum(counts / total, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def score_bins(scores: np.ndarray) -> FeatureBaseline:
    """The score baseline of holdout scores: ``SCORE_QUANTILES`` edges (less
    ``SCORE_EDGE_TOLERANCE``) and the counted share of the scores in each bin."""
    values = np.asarray(scores, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return FeatureBaseline(edges=[], proportions=[1.0], missing_rate=0.0, n_rows=0)
    edges = np.unique(np.quantile(values, SCORE_QUANTILES)) - SCORE_EDGE_TOLERANCE
    return FeatureBaseline(
        edges=edges.tolist(),
        proportions=(bin_counts(values, edges) / values.size).tolist(),
        missing_rate=0.0,
        n_rows=int(values.size),
    )


def score_reference(manifest: Manifest) -> FeatureBaseline | None:
    """What served scores are compared with: the package's counted score bins, or for older
    packages bins derived from its score quantiles."""
    if manifest.baseline_score_bins is not None:
        return manifest.baseline_score_bins
    return score_baseline(manifest.baseline_score_distribution)


def score_baseline(distribution: dict[str, float]) -> FeatureBaseline | None:
    """Score bins from quantiles alone (packages without ``baseline_score_bins``): the
    quantiles (less ``SCORE_EDGE_TOLERANCE``) are the edges and the gaps between their levels
    the expected shares, tied quantiles merged. Approximate where scores tie: a quantile level
    says nothing of how much mass sits exactly on it."""
    levels: list[tuple[float, float]] = []
    for key, value in distribution.items():
        if not key.startswith("q") or value != value:  # NaN: no scores at training
            continue
        levels.append((float(key[1:]), float(value)))
    if not levels:
        return None
    levels.sort()
    edges: list[float] = []
    proportions: list[float] = []
    below = 0.0
    for level, value in levels:
        if edges and value <= edges[-1]:
            continue  # a tie: its share stays with the bin that starts at this value
        proportions.append(level - below)
        edges.append(value)
        below = level
    proportions.append(1.0 - below)
    shifted = [edge - SCORE_EDGE_TOLERANCE for edge in edges]
    return FeatureBaseline(edges=shifted, proportions=proportions, missing_rate=0.0, n_rows=0)
