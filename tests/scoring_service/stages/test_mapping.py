"""Request -> data domain: the package's mapping turns validated requests into entity keys,
request values and the raw fields its on-demand views read; a request the package cannot be
mapped from is refused naming the field."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models.package import Manifest, OnDemandViewInfo, read_manifest
from scoring_service.core.errors import EntityMappingError
from scoring_service.stages.mapping import map_entity, map_records
from tests.fixtures.service import FRAUD_API

BODY = {
    "transaction_id": "tx_1",
    "amount": 12.5,
    "currency": "usd",
    "ip_address": " 2001:DB8::1 ",
    "card_id": "card_1",
    "merchant_id": "m_1",
}


@pytest.fixture(scope="module")
def manifest(model_root: Path) -> Manifest:
    return read_manifest(model_root / "fraud_model" / "v1")


def with_on_demand(manifest: Manifest) -> Manifest:
    """The manifest with the payment domain's geo on-demand view (request fields only)."""
    view = OnDemandViewInfo(
        request_fields=["card_country", "ip_country", "merchant_country"],
        source_views=[],
        stored_inputs=[],
        features=["ip_country_mismatch"],
        function="feature_repo.fraud.transforms:geo_context",
        code_sha256="0" * 64,
    )
    return manifest.model_copy(update={"on_demand_views": {"geo_context": view}})


def test_requests_become_entity_keys_and_request_values(manifest: Manifest) -> None:
    requests = [
        FRAUD_API.request(**BODY),
        FRAUD_API.request(**{**BODY, "transaction_id": "tx_2", "amount": 0, "card_id": "card_2"}),
    ]
    mapped = map_records(requests, manifest)
    assert manifest.entity_mapping == {
        "ip_address": "ip_address",
        "card_id": "card_id",
        "merchant_id": "merchant_id",
    }
    # The validated values: the canonical IP address, keys in the mapping's order.
    assert mapped.keys == {
        "ip_address": ["2001:db8::1", "2001:db8::1"],
        "card_id": ["card_1", "card_2"],
        "merchant_id": ["m_1", "m_1"],
    }
    assert manifest.request_features == ["amount"]
    assert mapped.request_values.dtype == np.float32
    np.testing.assert_array_equal(mapped.request_values, [[12.5], [0.0]])
    assert mapped.request_fields == {}  # no on-demand view reads the request


def test_an_absent_request_value_is_missing_as_in_training(manifest: Manifest) -> None:
    """Optional request features left out are NaN; whole numbers and floats alike are read as
    float() reads them."""
    own = manifest.model_copy(update={"request_features": ["amount", "bonus"]})
    rows = [
        SimpleNamespace(amount=3, bonus=None, ip_address="a", card_id="c", merchant_id="m"),
        SimpleNamespace(amount=2.25, bonus=7, ip_address=None, card_id="d", merchant_id="m"),
    ]
    mapped = map_records(rows, own)
    assert mapped.request_values[0, 0] == 3.0 and math.isnan(mapped.request_values[0, 1])
    np.testing.assert_array_equal(mapped.request_values[1], [2.25, 7.0])
    assert mapped.keys["ip_address"] == ["a", None]


def test_on_demand_views_get_their_raw_request_fields(manifest: Manifest) -> None:
    mapped = map_records(
        [FRAUD_API.request(**BODY, card_country="US", ip_country="FR")], with_on_demand(manifest)
    )
    assert mapped.request_fields == {
        "card_country": ["US"],
        "ip_country": ["FR"],
        "merchant_country": [None],
    }


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        (
            {"entity_mapping": {"device_id": "device"}},
            "model fraud_model/v1 maps request field 'device_id' to entity 'device', but the "
            "request has no such field",
        ),
        ({"request_features": ["amount", "tip"]}, "model fraud_model/v1 needs request field 'tip'"),
    ],
)
def test_a_request_without_a_mapped_field_is_refused(
    manifest: Manifest, change: dict, fault: str
) -> None:
    with pytest.raises(EntityMappingError) as refused:
        map_records([FRAUD_API.request(**BODY)], manifest.model_copy(update=change))
    assert refused.value.message == fault
    assert (refused.value.status_code, refused.value.code) == (422, "entity_mapping_failed")


def test_an_on_demand_field_the_request_lacks_is_refused(manifest: Manifest) -> None:
    row = SimpleNamespace(amount=1.0, ip_address="a", card_id="c", merchant_id="m")
    with pytest.raises(EntityMappingError, match="'card_country' for its on-demand features"):
        map_records([row], with_on_demand(manifest))


def test_an_entity_call_knows_one_key(manifest: Manifest) -> None:
    mapped = map_entity("card_id", "card_9", with_on_demand(manifest))
    assert mapped.keys == {"ip_address": [None], "card_id": ["card_9"], "merchant_id": [None]}
    assert mapped.request_values.shape == (1, 1) and math.isnan(mapped.request_values[0, 0])
    assert mapped.request_fields == {
        "card_country": [None],
        "ip_country": [None],
        "merchant_country": [None],
    }
    with pytest.raises(EntityMappingError, match="does not read entity 'zipcode'"):
        map_entity("zipcode", "76104", manifest)
