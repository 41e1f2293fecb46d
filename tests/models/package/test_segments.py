"""A family's segment keys are the same whichever way the value arrives: a request field's
string, a stored feature as training holds it (int64, float64 with NaN, a nullable integer read
as float64) or as serving reads it (float32)."""

from __future__ import annotations

import numpy as np
import pytest

from models.package import segment_key


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("US", "US"),
        (3, "3"),
        (np.int64(3), "3"),
        (3.0, "3"),
        (np.float32(3.0), "3"),
        (np.float64(-2.0), "-2"),
        (np.float32(16_777_216.0), "16777216"),
        (True, "1"),
    ],
)
def test_a_value_is_keyed_as_the_integer_it_holds(value: object, key: str) -> None:
    assert segment_key(value) == key


@pytest.mark.parametrize("value", [None, float("nan"), np.float32("nan"), np.inf, 2.5, 0.1])
def test_a_missing_or_fractional_value_has_no_segment(value: object) -> None:
    assert segment_key(value) is None


def test_training_and_serving_key_a_column_alike() -> None:
    stored = np.array([0, 2, 7, np.nan, 2], dtype=np.float64)  # training, NaN where missing
    served = stored.astype(np.float32)  # serving's feature batch
    assert [segment_key(v) for v in stored.tolist()] == [segment_key(v) for v in served.tolist()]
    assert [segment_key(v) for v in served] == ["0", "2", "7", None, "2"]
