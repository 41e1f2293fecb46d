"""Synthetic served traffic drawn from a package's own baselines, for drift tests.

Each input is drawn bin by bin with its training proportions (uniform within a bin) and made
missing at its training missing rate, so an undisturbed sample has a PSI near zero against the
package: whatever moves above it in a test was planted there.
"""

from __future__ import annotations

import numpy as np

from models.package import FeatureBaseline, Manifest, score_reference


def sample(baseline: FeatureBaseline, n: int, rng: np.random.Generator) -> np.ndarray:
    """n values distributed as the baseline (float64, NaN at its missing rate)."""
    edges = np.asarray(baseline.edges, dtype=np.float64)
    if edges.size == 0:
        return np.full(n, np.nan)
    width = float(edges[-1] - edges[0]) or 1.0
    lows = np.concatenate([[edges[0] - width], edges])
    highs = np.concatenate([edges, [edges[-1] + width]])
    shares = np.asarray(baseline.proportions, dtype=np.float64)
    bins = rng.choice(edges.size + 1, size=n, p=shares / shares.sum())
    values = lows[bins] + rng.random(n) * (highs[bins] - lows[bins])
    values[rng.random(n) < baseline.missing_rate] = np.nan
    return values


def traffic(manifest: Manifest, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(float32 input matrix in model order, scores) as the package saw them in training."""
    rng = np.random.default_rng(seed)
    matrix = np.column_stack(
        [sample(manifest.feature_baselines[name], n, rng) for name in manifest.features]
    ).astype(np.float32)
    reference = score_reference(manifest)
    assert reference is not None
    scores = np.clip(sample(reference, n, rng), 0.0, 1.0)
    return matrix, scores
