"""Request and response models of the business API.

Requests forbid unknown fields and bound every string and number, so a malformed call is
refused at the door with a message naming the field, rather than half-scored.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from feature_repo.reference import CURRENCIES

Label = Literal["not_fraud", "suspicious", "highly_suspicious", "uncertain"]
EntityStatus = Literal["present", "missing", "stale", "not_requested"]

IdentifierStr = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"),
]
CountryCode = Annotated[str, Field(min_length=2, max_length=2, pattern=r"^[A-Z]{2}$")]


# A dotted quad already in canonical form: four decimal octets, no leading zeros, each <= 255.
_CANONICAL_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


def canonical_ip(value: object) -> str:
    """Canonical text of an IPv4/IPv6 address, or a ValueError a caller can act on.

    Called once per transaction (10,000 times for a full batch): an IPv4 address already in
    canonical form, most of them, is recognised by one regular expression; other text goes
    through ``ipaddress``, its results cached (addresses repeat in traffic).
    """
    if not isinstance(value, str) or len(value) > 45:
        raise ValueError("must be an IPv4 or IPv6 address in text form, e.g. 203.0.113.7")
    text = value.strip()
    if _CANONICAL_IPV4.fullmatch(text):
        return text
    return _parse_ip(text)


@lru_cache(maxsize=8192)
def _parse_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a valid IPv4 or IPv6 address (e.g. 203.0.113.7 or 2001:db8::1)"
        ) from None


class Transaction(BaseModel):
    """A payment to score, in business terms."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "transaction_id": "tx_000000042",
                    "amount": 129.90,
                    "currency": "USD",
                    "ip_address": "203.0.113.7",
                    "card_id": "card_0001234",
                    "merchant_id": "m_00042",
                    "card_country": "US",
                    "ip_country": "US",
                    "merchant_country": "US",
                }
            ]
        },
    )

    transaction_id: IdentifierStr = Field(description="Caller's id, echoed in the answer.")
    amount: float = Field(
        ge=0.0,
        le=1e9,
        allow_inf_nan=False,
        description="Amount in `currency`; finite and not negative.",
    )
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217 code, e.g. USD.")
    ip_address: str = Field(max_length=45, description="Sender IP address, IPv4 or IPv6.")
    card_id: IdentifierStr = Field(description="Card token.")
    merchant_id: IdentifierStr = Field(description="Merchant id.")
    timestamp: datetime | None = Field(
        default=None, description="When the payment happened (informational)."
    )
    card_country: CountryCode | None = None
    ip_country: CountryCode | None = None
    merchant_country: CountryCode | None = None

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().upper() not in CURRENCIES:
            raise ValueError(
                f"{value!r} is not a supported ISO 4217 currency code (e.g. USD, EUR, GBP)"
            )
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("ip_address", mode="before")
    @classmethod
    def _ip(cls, value: object) -> str:
        return canonical_ip(value)


class ScoreBatchRequest(BaseModel):
    """Several transactions scored in one call (one feature read, one model call)."""

    model_config = ConfigDict(extra="forbid")

    transactions: list[Transaction] = Field(min_length=1, max_length=10_000)


class EntityFreshness(BaseModel):
    """What the online store knew about one entity of the request."""

    status: EntityStatus
    age_seconds: float | None = Field(
        default=None, description="Age of the entity's features, when present or stale."
    )


class ScoreResult(BaseModel):
    """The answer for one transaction."""

    transaction_id: str
    score: float | None = Field(description="Fraud probability in [0, 1].")
    label: Label
    reasons: list[str] = Field(description="Why this label: red flags and evidence gaps.")
    model_version: str
    feature_freshness: dict[str, EntityFreshness]


class ScoreResponse(ScoreResult):
    """The answer to POST /v1/transactions/score."""

    request_id: str


class ScoreBatchResponse(BaseModel):
    """The answer to POST /v1/transactions/score-batch, results in request order."""

    results: list[ScoreResult]
    model_version: str
    request_id: str


class EntityScoreResponse(BaseModel):
    """The answer for an entity-id call: the risk of a typical payment from this entity."""

    entity: str
    entity_id: str
    score: float | None
    label: Label
    reasons: list[str]
    model_version: str
    feature_freshness: dict[str, EntityFreshness]
    request_id: str


class ErrorResponse(BaseModel):
    """Every error the service returns."""

    code: str = Field(description="Stable machine-readable code.", examples=["invalid_request"])
    stage: str = Field(description="Stage that refused the request.", examples=["request"])
    message: str = Field(description="What went wrong and what to do about it.")
    request_id: str


class HealthResponse(BaseModel):
    """Liveness / readiness."""

    status: Literal["alive", "ready", "not_ready"]
    checks: dict[str, str] = Field(default_factory=dict)
    model_version: str | None = None
    device: str | None = None
    graph: str | None = None
