"""On-demand features at serving time: the domain's own transforms computed on the stored block
just read and the request's fields, in model order; a package whose on-demand views no longer
match the live feature store or the code is refused, naming the view and the fault."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from feature_repo.layout import OnDemandLayout
from feature_repo.transforms import resolve
from models.package import Manifest, OnDemandViewInfo, read_manifest
from scoring_service.stages.on_demand import OnDemandFeatures, for_manifest, on_demand_problems

AMOUNT = "feature_repo.fraud.transforms:amount_context"
GEO = "feature_repo.fraud.transforms:geo_context"
STORED = [
    "card_amount_mean_30d",
    "card_amount_max_30d",
    "ip_amount_mean_7d",
    "card_rt_amount_sum_1h",
    "card_rt_txn_count_1h",
    "unrelated_feature",
]


def features() -> OnDemandFeatures:
    return OnDemandFeatures(
        {
            "amount_context": (AMOUNT, ["amount_to_card_mean_30d", "amount_to_card_mean_1h"]),
            "geo_context": (GEO, ["ip_country_mismatch", "merchant_country_mismatch"]),
        },
        STORED,
    )


def test_outputs_are_computed_in_model_order_from_the_row_and_the_request() -> None:
    block = features()
    assert block.features == [
        "amount_to_card_mean_30d",
        "amount_to_card_mean_1h",
        "ip_country_mismatch",
        "merchant_country_mismatch",
    ]
    assert block.width == 4
    assert block.request_fields == ["amount", "card_country", "ip_country", "merchant_country"]
    stored = np.array(
        [
            [50.0, 400.0, 10.0, 90.0, 3.0, 7.0],  # card mean 50; last hour 90 over 3 payments
            [np.nan, 10.0, 10.0, 0.0, 0.0, 7.0],  # no 30-day mean; nothing in the last hour
        ],
        dtype=np.float32,
    )
    request = {
        "amount": [150.0, 5.0],
        "card_country": ["US", None],
        "ip_country": ["FR", "US"],
        "merchant_country": ["US", "US"],
    }
    out = block.compute(stored, request)
    assert out.dtype == np.float32 and out.shape == (2, 4)
    np.testing.assert_array_equal(out[0], [3.0, 5.0, 1.0, 0.0])  # 150/50, 150/(90/3)
    assert all(math.isnan(v) for v in out[1])  # unknown mean, no payments, unknown card country


def test_a_view_must_compute_what_the_model_reads_from_inputs_it_reads() -> None:
    with pytest.raises(ValueError, match=r"on-demand view geo does not compute \['amount_ratio'\]"):
        OnDemandFeatures({"geo": (GEO, ["amount_ratio"])}, STORED)
    with pytest.raises(ValueError) as refused:
        OnDemandFeatures({"amounts": (AMOUNT, ["amount_to_card_mean_30d"])}, STORED[:2])
    assert str(refused.value) == (
        "on-demand view amounts reads ['ip_amount_mean_7d', 'card_rt_amount_sum_1h', "
        "'card_rt_txn_count_1h'], which the model does not read"
    )
    with pytest.raises(ValueError, match="is not a declared on-demand transform"):
        OnDemandFeatures({"x": ("feature_repo.transforms:ratio", ["y"])}, STORED)


@pytest.fixture(scope="module")
def manifest(model_root: Path) -> Manifest:
    """The session's package, given the payment domain's geo view as it was trained."""
    view = OnDemandViewInfo(
        request_fields=["card_country", "ip_country", "merchant_country"],
        source_views=[],
        stored_inputs=[],
        features=["ip_country_mismatch", "merchant_country_mismatch"],
        function=GEO,
        code_sha256=resolve(GEO).code_sha256,
    )
    base = read_manifest(model_root / "fraud_model" / "v1")
    return base.model_copy(update={"on_demand_views": {"geo_context": view}})


def live_geo(**changes: object) -> dict[str, OnDemandLayout]:
    fields = {
        "request_fields": ["merchant_country", "card_country", "ip_country"],
        "source_views": [],
        "features": ["ip_country_mismatch", "merchant_country_mismatch"],
        "function": GEO,
        **changes,
    }
    return {"geo_context": OnDemandLayout(**fields)}  # type: ignore[arg-type]


def test_a_package_matching_the_store_and_the_code_has_no_problem(manifest: Manifest) -> None:
    assert on_demand_problems(manifest, live_geo()) == []
    assert on_demand_problems(manifest, live_geo(function="")) == []  # untagged live view
    block = for_manifest(manifest)
    assert block.features == ["ip_country_mismatch", "merchant_country_mismatch"]
    assert for_manifest(manifest.model_copy(update={"on_demand_views": {}})).width == 0


@pytest.mark.parametrize(
    ("live", "view", "problem"),
    [
        ({}, None, "on-demand view geo_context is gone from the live service"),
        (
            live_geo(features=["ip_country_mismatch"]),
            None,
            "on-demand view geo_context: outputs ['ip_country_mismatch', "
            "'merchant_country_mismatch'] in package, ['ip_country_mismatch'] live",
        ),
        (
            live_geo(request_fields=["ip_country"]),
            None,
            "on-demand view geo_context: request fields ['card_country', 'ip_country', "
            "'merchant_country'] in package, ['ip_country'] live",
        ),
        (
            live_geo(function=AMOUNT),
            None,
            f"on-demand view geo_context: computed by {GEO} in training, {AMOUNT} in the live "
            "feature store",
        ),
        (
            live_geo(),
            {"code_sha256": "0" * 64},
            f"on-demand view geo_context: the code of {GEO} changed since training (retrain, or "
            "serve the code the model was trained with)",
        ),
        (
            live_geo(),
            {"function": "feature_repo.fraud.transforms:gone"},
            "on-demand view geo_context: feature_repo.fraud.transforms:gone is not a declared "
            "on-demand transform",
        ),
        (
            {**live_geo(), "amount_context": OnDemandLayout(["amount"], [], ["x"], AMOUNT)},
            None,
            "live service has extra on-demand view amount_context",
        ),
    ],
    ids=[
        "gone",
        "outputs",
        "request-fields",
        "other-function",
        "code-changed",
        "no-function",
        "extra-view",
    ],
)
def test_each_mismatch_is_named(
    manifest: Manifest, live: dict, view: dict | None, problem: str
) -> None:
    if view is not None:
        info = manifest.on_demand_views["geo_context"].model_copy(update=view)
        manifest = manifest.model_copy(update={"on_demand_views": {"geo_context": info}})
    assert on_demand_problems(manifest, live) == [problem]


def test_a_view_reading_what_the_model_does_not_is_named(manifest: Manifest) -> None:
    amounts = OnDemandViewInfo(
        request_fields=["amount"],
        source_views=["card_features"],
        stored_inputs=list(resolve(AMOUNT).stored_inputs),
        features=["amount_to_card_mean_1h"],
        function=AMOUNT,
        code_sha256=resolve(AMOUNT).code_sha256,
    )
    own = manifest.model_copy(update={"on_demand_views": {"amount_context": amounts}})
    live = {
        "amount_context": OnDemandLayout(["amount"], ["card_features"], amounts.features, AMOUNT)
    }
    (problem,) = on_demand_problems(own, live)
    assert problem.startswith("on-demand view amount_context reads ['card_rt_amount_sum_1h'")
    assert problem.endswith("which the model does not read")
