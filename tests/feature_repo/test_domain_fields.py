"""Request fields: each kind parses a value into what training and serving use, or refuses it
with a sentence a caller can act on; a declaration whose constraints do not fit is refused.

Refusals of whole domain files (with the place in the file) are in ``test_domain.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from feature_repo.domain import load_domain
from feature_repo.domain_fields import RequestField
from feature_repo.reference import CURRENCIES

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

CLAIMED = {
    "kind": "number",
    "constraints": {"ge": 0, "le": 1e6},
    "description": "Amount claimed.",
    "example": 120.0,
}
CHANNEL = {
    "kind": "category",
    "required": False,
    "constraints": {"values": ["web", "phone", "other"], "unknown": "as_other", "other": "other"},
    "description": "Where the claim came in.",
}


def field(kind: str, required: bool = True, **constraints: Any) -> RequestField:
    return RequestField.model_validate(
        {"kind": kind, "required": required, "constraints": constraints, "description": "x"}
    )


def test_fields_parse_values_as_declared() -> None:
    fraud = load_domain(ROOT / "feature_repo" / "fraud").request_fields
    assert fraud["ip_address"].parse(" 2001:DB8:0::1 ") == "2001:db8::1"
    assert fraud["currency"].parse("usd") == "USD"
    with pytest.raises(ValueError, match="not a supported ISO 4217"):
        fraud["currency"].parse("XYZ")
    with pytest.raises(ValueError, match="must match the pattern"):
        fraud["card_id"].parse("card 1; DROP")
    with pytest.raises(ValueError, match="is required"):
        fraud["amount"].parse(None)
    assert fraud["card_country"].parse(None) is None
    now = datetime(2024, 6, 1, tzinfo=UTC)
    assert fraud["timestamp"].parse("2024-05-31T10:00:00Z", now=now) < now
    with pytest.raises(ValueError, match="within 86400 seconds of now"):
        fraud["timestamp"].parse(now + timedelta(days=365 * 75), now=now)
    with pytest.raises(ValueError, match="time zone"):
        fraud["timestamp"].parse("2024-06-01T10:00:00", now=now)

    channel = RequestField.model_validate(CHANNEL)
    assert channel.parse("web") == "web"
    assert channel.parse("carrier pigeon") == "other"
    missing = channel.model_copy(
        update={
            "constraints": channel.constraints.model_copy(
                update={"unknown": "as_missing", "other": None}
            )
        }
    )
    assert missing.parse("carrier pigeon") is None
    refuse = channel.model_copy(
        update={
            "constraints": channel.constraints.model_copy(update={"unknown": None, "other": None})
        }
    )
    with pytest.raises(ValueError, match="is not one of"):
        refuse.parse("carrier pigeon")
    with pytest.raises(ValueError, match="must be a number"):
        RequestField.model_validate(CLAIMED).parse("ten")


def test_ip_addresses_parse_to_the_text_the_keys_were_written_with() -> None:
    ip = load_domain(ROOT / "feature_repo" / "fraud").request_fields["ip_address"]
    assert ip.parse("203.0.113.7") == "203.0.113.7"  # canonical already: the fast path
    assert ip.parse(" 203.0.113.7 ") == "203.0.113.7"
    assert ip.parse("::ffff:cb00:7107") == "::ffff:cb00:7107"
    assert ip.parse("2001:DB8::0:1") == ip.parse("2001:db8::1") == "2001:db8::1"
    for bad in ("256.1.1.1", "010.1.2.3", "1.2.3", "not-an-ip"):
        with pytest.raises(ValueError, match="not a valid IPv4 or IPv6 address"):
            ip.parse(bad)
    with pytest.raises(ValueError, match="in text form"):
        ip.parse(12345)
    kept = ip.model_copy(
        update={"constraints": ip.constraints.model_copy(update={"canonicalize": False})}
    )
    assert kept.parse("2001:DB8::0:1") == "2001:DB8::0:1"


# (kind, constraints, value, the refusal's exact sentence)
REFUSED = [
    ("number", {}, True, "must be a number"),
    ("number", {}, "1.5", "must be a number"),
    ("number", {}, float("inf"), "must be a finite number"),
    ("number", {}, float("nan"), "must be a finite number"),
    ("number", {}, 10**400, "must be a finite number"),
    ("number", {"ge": 0}, -0.01, "must be greater than or equal to 0"),
    ("number", {"gt": 0}, 0, "must be greater than 0"),
    ("number", {"le": 100}, 100.5, "must be less than or equal to 100"),
    ("number", {"lt": 1e6}, 1e6, "must be less than 1e+06"),
    ("integer", {}, 2.5, "must be a whole number"),
    ("integer", {"ge": 18}, 17, "must be greater than or equal to 18"),
    ("identifier", {}, 42, "must be text"),
    ("identifier", {"min_length": 2}, "a", "must have at least 2 characters"),
    ("text", {"max_length": 3}, "abcd", "must have at most 3 characters"),
    ("identifier", {"pattern": "^c_"}, "d_1", "must match the pattern ^c_"),
    ("ip_address", {}, "1" * 46, "must be an IPv4 or IPv6 address in text form, e.g. 203.0.113.7"),
    ("ip_address", {}, "1.2.3.4/24", "'1.2.3.4/24' is not a valid IPv4 or IPv6 address"),
    ("currency", {}, "BTC", "'BTC' is not a supported ISO 4217 currency code (e.g. USD, EUR)"),
    ("currency", {}, 978, "978 is not a supported ISO 4217 currency code (e.g. USD, EUR)"),
    ("currency", {"values": ["EUR"]}, "USD", "'USD' is not a supported ISO 4217 currency code"),
    ("country", {}, "us", "'us' is not an ISO 3166-1 alpha-2 country code (e.g. US)"),
    ("country", {}, "USA", "'USA' is not an ISO 3166-1 alpha-2 country code (e.g. US)"),
    ("country", {"values": ["US", "DE"]}, "FR", "'FR' is not one of the accepted countries"),
    ("category", {"values": ["a", "b"]}, "c", "'c' is not one of ['a', 'b']"),
    ("category", {"values": ["a", "b"]}, 1, "1 is not one of ['a', 'b']"),
    ("timestamp", {}, 1717243200, "must be an ISO 8601 date and time"),
    ("timestamp", {}, "noon", "'noon' is not an ISO 8601 date and time"),
    (
        "timestamp",
        {},
        datetime(2024, 6, 1),
        "must carry a time zone, e.g. 2024-06-01T12:00:00Z",
    ),
    ("timestamp", {"max_skew_seconds": 60}, NOW + timedelta(seconds=61), "must be within 60"),
    ("timestamp", {"max_skew_seconds": 60}, NOW - timedelta(seconds=61), "must be within 60"),
]


@pytest.mark.parametrize(
    ("kind", "constraints", "value", "sentence"),
    REFUSED,
    ids=[f"{kind}-{i}" for i, (kind, *_) in enumerate(REFUSED)],
)
def test_a_value_against_its_kind_is_refused_with_its_sentence(
    kind: str, constraints: dict[str, Any], value: Any, sentence: str
) -> None:
    with pytest.raises(ValueError) as caught:
        field(kind, **constraints).parse(value, now=NOW)
    assert str(caught.value).startswith(sentence), str(caught.value)


# (kind, constraints, value, what it parses to)
ACCEPTED = [
    ("number", {"ge": 0}, 0, 0.0),
    ("number", {"gt": 0, "lt": 1}, np.float32(0.5), 0.5),
    ("number", {}, np.int64(7), 7.0),
    ("integer", {"le": 10}, 10.0, 10),
    ("integer", {}, np.int32(-3), -3),
    ("identifier", {"min_length": 2, "max_length": 2}, "ab", "ab"),
    ("text", {"pattern": "^c_"}, "c_1 and more", "c_1 and more"),
    ("currency", {}, " eur ", "EUR"),
    ("currency", {"values": ["EUR", "GBP"]}, "gbp", "GBP"),
    ("country", {}, "ZZ", "ZZ"),  # the shape is enough unless `values` narrows it
    ("category", {"values": ["a"], "unknown": "as_missing"}, 3, None),
    ("ip_address", {}, "0:0:0:0:0:0:0:1", "::1"),
    (
        "timestamp",
        {"max_skew_seconds": 60},
        "2024-06-01T12:01:00+00:00",
        NOW + timedelta(minutes=1),
    ),
    ("timestamp", {}, "2024-06-01T14:00:00+02:00", NOW),
]


@pytest.mark.parametrize(("kind", "constraints", "value", "parsed"), ACCEPTED)
def test_a_value_within_its_kind_parses_to_what_models_and_keys_use(
    kind: str, constraints: dict[str, Any], value: Any, parsed: Any
) -> None:
    result = field(kind, **constraints).parse(value, now=NOW)
    assert result == parsed
    assert type(result) is type(parsed)


def test_the_skew_of_a_timestamp_is_only_checked_against_a_given_now() -> None:
    late = NOW + timedelta(days=3)
    assert field("timestamp", max_skew_seconds=60).parse(late) == late


def test_missing_values_pass_only_for_optional_fields() -> None:
    for kind in ("number", "identifier", "category", "timestamp"):
        constraints = {"values": ["a"]} if kind == "category" else {}
        assert field(kind, required=False, **constraints).parse(None) is None
        with pytest.raises(ValueError, match=r"^is required$"):
            field(kind, **constraints).parse(None)


def test_every_reference_currency_is_accepted_by_default() -> None:
    currency = field("currency")
    assert {currency.parse(code.lower()) for code in CURRENCIES} == CURRENCIES


def test_defaults_refuse_unknown_categories_and_canonicalize_addresses() -> None:
    category = field("category", values=["a"])
    assert category.unknown == "refuse"
    assert field("ip_address").canonicalize is True
    assert field("ip_address", canonicalize=False).canonicalize is False
    assert field("number", ge=0, lt=5).constraints.given() == {"ge", "lt"}


# (kind, constraints, words of the refusal)
BAD_DECLARATIONS = [
    ("number", {"ge": 0, "gt": 0}, "give either ge or gt, not both"),
    ("integer", {"le": 1, "lt": 2}, "give either le or lt, not both"),
    ("number", {"gt": 5, "lt": 1}, "lower bound 5.0 is above upper bound 1.0"),
    ("text", {"min_length": 5, "max_length": 2}, "min_length 5 exceeds max_length 2"),
    ("identifier", {"max_length": 0}, "greater than or equal to 1"),
    (
        "currency",
        {"values": ["USD", "XXX"]},
        "currencies ['XXX'] are not in feature_repo.reference",
    ),
    ("country", {"values": ["US", "usa"]}, "countries ['usa'] are not ISO 3166-1 alpha-2 codes"),
    ("category", {"values": ["a", "b", "a"]}, "category values repeat: ['a', 'b', 'a']"),
    ("category", {"values": ["a"], "other": "a"}, "`other` only applies with unknown: as_other"),
    ("timestamp", {"max_skew_seconds": 0}, "max_skew_seconds"),
    ("number", {"unknown": "refuse"}, "it takes ['ge', 'gt', 'le', 'lt']"),
]


@pytest.mark.parametrize(("kind", "constraints", "words"), BAD_DECLARATIONS)
def test_a_declaration_that_does_not_fit_its_kind_is_refused(
    kind: str, constraints: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        field(kind, **constraints)
    assert words in str(caught.value)


def test_a_field_needs_a_description_and_a_valid_example() -> None:
    with pytest.raises(ValidationError, match="description"):
        RequestField.model_validate({"kind": "number"})
    with pytest.raises(ValidationError, match="example 'abc' is refused: must be a number"):
        RequestField.model_validate({**CLAIMED, "example": "abc"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        RequestField.model_validate({**CLAIMED, "unit": "EUR"})
