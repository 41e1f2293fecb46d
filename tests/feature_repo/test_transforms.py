"""The on-demand transform contract: declared functions resolve, others are refused."""

from __future__ import annotations

import numpy as np
import pytest

from feature_repo.fraud import transforms as fraud
from feature_repo.transforms import model_input, ratio, resolve


def test_a_declared_transform_resolves_with_its_inputs_and_outputs() -> None:
    transform = resolve("feature_repo.fraud.transforms:geo_context")
    assert transform.function is fraud.geo_context
    assert transform.reference == "feature_repo.fraud.transforms:geo_context"
    assert transform.request_fields == ("card_country", "ip_country", "merchant_country")
    assert len(transform.code_sha256) == 64


@pytest.mark.parametrize(
    ("reference", "fault"),
    [
        ("feature_repo.fraud.transforms", "not a `module:function` reference"),
        ("feature_repo.nowhere:geo_context", "cannot be imported"),
        ("feature_repo.transforms:ratio", "not a declared on-demand transform"),
        ("feature_repo.fraud.transforms:missing", "not a declared on-demand transform"),
    ],
)
def test_other_references_are_refused_naming_the_fault(reference: str, fault: str) -> None:
    with pytest.raises(ValueError, match=fault):
        resolve(reference)


def test_ratio_is_nan_without_a_positive_denominator() -> None:
    out = ratio(np.array([1.0, 1.0, np.nan, 2.0]), np.array([2.0, 0.0, 1.0, np.nan]))
    assert out[0] == 0.5 and np.isnan(out[1:]).all()


def test_model_input_orders_stored_on_demand_then_request_blocks() -> None:
    stored = np.array([[1.0, 2.0]], dtype=np.float32)
    matrix = model_input(stored, np.array([[3.0]], dtype=np.float32), np.array([[4.0]]))
    assert matrix.dtype == np.float32 and matrix.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert model_input(stored, None, np.array([[4.0]])).tolist() == [[1.0, 2.0, 4.0]]
