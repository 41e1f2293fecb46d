"""float32 thresholds: rounding toward -inf keeps every float32 comparison LightGBM's."""

from __future__ import annotations

import numpy as np

from models.thresholds import float32_floor


def test_float32_floor() -> None:
    rng = np.random.default_rng(50)
    values = np.concatenate(
        [
            rng.normal(size=2000) * 10.0 ** rng.integers(-40, 40, 2000),
            np.array([0.0, -0.0, 1e-300, -1e-300, 1e300, -1e300, 0.1, 2.5]),
        ]
    )
    floor = float32_floor(values)
    assert floor.dtype == np.float32
    assert np.all(floor.astype(np.float64) <= values)
    with np.errstate(over="ignore"):
        above = np.nextafter(floor, np.float32(np.inf)).astype(np.float64)
    assert np.all(above > values)


def test_float32_floor_keeps_each_comparison() -> None:
    """For float32 x near each threshold: x <= t (double) iff x <= float32_floor(t)."""
    rng = np.random.default_rng(51)
    thresholds = rng.normal(size=500) * 10.0 ** rng.integers(-5, 5, 500)
    floor = float32_floor(thresholds)
    for step in (-2, -1, 0, 1, 2):
        x = floor
        for _ in range(abs(step)):
            x = np.nextafter(x, np.float32(np.inf if step > 0 else -np.inf))
        np.testing.assert_array_equal(x.astype(np.float64) <= thresholds, x <= floor)


def test_float32_floor_of_a_scalar_and_of_lightgbms_infinity() -> None:
    assert float32_floor(0.1)[0] <= 0.1
    assert float32_floor(1e300)[0] == np.finfo(np.float32).max
    assert float32_floor(-1e300)[0] == -np.inf
