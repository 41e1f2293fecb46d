"""Split thresholds in float32, rounded so that float32 comparisons agree with LightGBM's.

LightGBM compares a float32 input, widened to double, with a double threshold: ``x <= t``. For
every float32 ``x`` that holds iff ``x <= t32``, where ``t32`` is the largest float32 not above
``t``. Rounding to the nearest float32 instead can round up onto an input value and send it the
other way. Both exported graphs (the TreeEnsemble in ``export.py`` and the standard-operator
graph in ``standard_graph.py``) store thresholds rounded this way, by this one function.
"""

from __future__ import annotations

import numpy as np


def float32_floor(values: np.ndarray | float) -> np.ndarray:
    """Largest float32 that is ``<=`` each float64 value (rounding toward -inf).

    For every float32 ``x``: ``x <= t`` iff ``x <= float32_floor(t)``. Values beyond the float32
    range (LightGBM writes ``1e300`` for "above every value") become the largest float32.
    """
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded
