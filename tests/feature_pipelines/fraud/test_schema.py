"""The fraud transaction schema: columns and dtypes, entity tables, the generator's world checked
against the reference lists, and the request body a generated transaction becomes."""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple
from datetime import UTC, datetime

import numpy as np
import pytest

from feature_pipelines.fraud import schema
from feature_pipelines.fraud.generate import generate_transactions
from feature_repo.domain import load_domain
from feature_repo.reference import COUNTRIES, CURRENCIES
from tests.conftest import FEATURE_REPO


def test_every_transaction_column_has_a_dtype_and_labels_are_columns() -> None:
    assert list(schema.TRANSACTION_DTYPES) == schema.TRANSACTION_COLUMNS
    assert len(set(schema.TRANSACTION_COLUMNS)) == len(schema.TRANSACTION_COLUMNS)
    assert set(schema.LABEL_COLUMNS) <= set(schema.TRANSACTION_COLUMNS)
    assert not set(schema.LABEL_COLUMNS) & set(schema.REQUEST_FIELDS)
    assert set(schema.REQUEST_FIELDS) <= set(schema.TRANSACTION_COLUMNS)


def test_counts_are_integers_and_every_other_feature_a_float() -> None:
    features = [f for entity in schema.ENTITY_FEATURES.values() for f in entity]
    floats = [f for f in features if schema.feature_dtype(f) == "float64"]
    assert floats == [
        "ip_amount_mean_7d",
        "ip_fraud_rate_30d",
        "card_amount_mean_30d",
        "card_amount_max_30d",
        "merchant_amount_mean_7d",
        "merchant_fraud_rate_30d",
    ]
    assert {schema.feature_dtype(f) for f in features if f not in floats} == {"int64"}
    assert schema.feature_dtype("card_distinct_countries_24h") == "int64"
    assert schema.feature_dtype("ip_chargeback_count_30d") == "int64"


def test_each_entity_has_one_join_key_feature_list_and_table_file() -> None:
    assert dict(schema.ENTITY_JOIN_KEYS) == {
        "ip": "ip_address",
        "card": "card_id",
        "merchant": "merchant_id",
    }
    assert dict(schema.TABLE_FILES) == {
        "ip": "ip_features.parquet",
        "card": "card_features.parquet",
        "merchant": "merchant_features.parquet",
    }
    assert list(schema.ENTITY_FEATURES) == list(schema.ENTITY_JOIN_KEYS)
    for entity, features in schema.ENTITY_FEATURES.items():
        assert all(f.startswith(f"{entity}_") for f in features), entity
        assert len(set(features)) == len(features), entity
    with pytest.raises(TypeError):
        schema.TABLE_FILES["ip"] = "elsewhere.parquet"  # type: ignore[index]


def test_the_generators_world_is_inside_the_reference_lists() -> None:
    assert tuple(schema.COUNTRY_CURRENCY) == schema.COUNTRIES
    assert len(schema.COUNTRIES) == 25
    assert set(schema.COUNTRIES) <= COUNTRIES
    assert set(schema.COUNTRY_CURRENCY.values()) <= CURRENCIES
    assert {c for c, cur in schema.COUNTRY_CURRENCY.items() if cur == "EUR"} == {
        "DE",
        "FR",
        "ES",
        "IT",
        "NL",
        "IE",
    }


@pytest.mark.parametrize(
    ("patch", "refusal"),
    [
        (
            "reference.CURRENCIES = frozenset({'USD', 'EUR'})",
            "currencies ['AUD', 'BRL', ",
        ),
        (
            "reference.COUNTRIES = frozenset({'US'})",
            "a generated country is not an ISO 3166-1 alpha-2 code",
        ),
    ],
    ids=["currency", "country"],
)
def test_the_schema_refuses_to_load_outside_the_reference_lists(patch: str, refusal: str) -> None:
    """The check runs at import: a generator code that serving would refuse stops everything."""
    code = f"import feature_repo.reference as reference; {patch}; "
    code += "import feature_pipelines.fraud.schema"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "ValueError: " in result.stderr and refusal in result.stderr


def test_request_fields_are_the_fraud_domains_bar_the_request_time() -> None:
    fields = load_domain(FEATURE_REPO).request_fields
    assert tuple(f for f in fields if f != "timestamp") == schema.REQUEST_FIELDS


def test_a_generated_transaction_is_a_request_the_fraud_domain_accepts() -> None:
    fields = load_domain(FEATURE_REPO).request_fields
    frame = generate_transactions(2_000, seed=3, days=2, end=datetime(2024, 6, 1, tzinfo=UTC))
    for row in frame.itertuples(index=False):
        body = schema.api_body(row)
        assert list(body) == list(schema.REQUEST_FIELDS)
        assert type(body[schema.AMOUNT]) is float
        for name, value in body.items():
            # Parsed unchanged: already in the form serving would turn it into.
            assert fields[name].parse(value) == value, (name, value)


def test_api_body_leaves_labels_and_evaluation_columns_out() -> None:
    Row = namedtuple("Row", schema.TRANSACTION_COLUMNS)
    values = {name: f"v_{name}" for name in schema.TRANSACTION_COLUMNS}
    row = Row(**{**values, schema.AMOUNT: np.float32(12.5), schema.IS_FRAUD: 1})
    body = schema.api_body(row)
    assert body == {
        **{name: f"v_{name}" for name in schema.REQUEST_FIELDS},
        schema.AMOUNT: 12.5,
    }
    assert type(body[schema.AMOUNT]) is float
