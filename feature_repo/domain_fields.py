"""Request fields of a domain: their kinds, constraints and the parsers that apply them.

A ``request_fields`` entry of ``domain.yaml`` is a ``RequestField``: a kind (identifier, IP
address, currency, country, category, number, integer, timestamp, text) with the constraints that
kind understands. ``RequestField.parse`` turns one value of a request into the value the model and
the entity keys use, or raises ``ValueError`` with a sentence a caller can act on; serving, batch
scoring and the training-data loaders all parse through it.
"""

from __future__ import annotations

import ipaddress
import math
import operator
import re
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from numbers import Real
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from feature_repo.reference import COUNTRY_PATTERN, CURRENCIES

DOMAIN_FILE = "domain.yaml"

# Names that end up as Python attributes, JSON keys and Feast column names.
NAME_PATTERN = r"^[a-z_][a-z0-9_]*$"
# A URL path segment: lower-case words joined by hyphens.
SEGMENT_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
Segment = Annotated[str, Field(pattern=SEGMENT_PATTERN, max_length=64)]

FieldKind = Literal[
    "identifier",
    "ip_address",
    "currency",
    "country",
    "category",
    "number",
    "integer",
    "timestamp",
    "text",
]
UnknownTreatment = Literal["refuse", "as_missing", "as_other"]

# Which constraints each kind understands; anything else is a mistake in the file.
_KIND_CONSTRAINTS: dict[str, frozenset[str]] = {
    "identifier": frozenset({"min_length", "max_length", "pattern"}),
    "text": frozenset({"min_length", "max_length", "pattern"}),
    "ip_address": frozenset({"canonicalize"}),
    "currency": frozenset({"values"}),
    "country": frozenset({"values"}),
    "category": frozenset({"values", "unknown", "other"}),
    "number": frozenset({"ge", "gt", "le", "lt"}),
    "integer": frozenset({"ge", "gt", "le", "lt"}),
    "timestamp": frozenset({"max_skew_seconds"}),
}
# Kinds whose values can be Feast entity keys (text) or model inputs (numbers).
KEY_KINDS = frozenset({"identifier", "ip_address", "text", "country", "currency"})
NUMERIC_KINDS = frozenset({"number", "integer"})
# Longest text form of an IPv6 address (with an embedded IPv4 part).
IP_TEXT_MAX = 45


class Constraints(BaseModel):
    """Bounds on one request field; which apply depends on the field's kind."""

    model_config = ConfigDict(extra="forbid")

    ge: float | None = Field(default=None, description="number/integer: at least this.")
    gt: float | None = Field(default=None, description="number/integer: more than this.")
    le: float | None = Field(default=None, description="number/integer: at most this.")
    lt: float | None = Field(default=None, description="number/integer: less than this.")
    min_length: int | None = Field(default=None, ge=0, description="identifier/text.")
    max_length: int | None = Field(default=None, ge=1, description="identifier/text.")
    pattern: str | None = Field(default=None, description="identifier/text: regular expression.")
    values: list[str] | None = Field(
        default=None,
        description="category: the vocabulary, in encoding order; currency/country: the accepted "
        "codes (default: every code of the reference list / any ISO 3166-1 alpha-2 shape).",
    )
    unknown: UnknownTreatment | None = Field(
        default=None,
        description="category: what a value outside `values` becomes: refuse (422), as_missing "
        "(scored as missing), as_other (scored as the `other` value). Default: refuse.",
    )
    other: str | None = Field(default=None, description="category with unknown: as_other.")
    max_skew_seconds: float | None = Field(
        default=None, gt=0, description="timestamp: largest distance from now, either way."
    )
    canonicalize: bool | None = Field(
        default=None,
        description="ip_address: rewrite to canonical text (IPv4 dotted quad, compressed IPv6) "
        "before use, as the entity keys were written. Default: true.",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern {value!r} is not a regular expression: {exc}") from None
        return value

    def given(self) -> set[str]:
        """Names of the constraints set in the file."""
        return {name for name, value in self if value is not None}


class RequestField(BaseModel):
    """One field of a business request."""

    model_config = ConfigDict(extra="forbid")

    kind: FieldKind
    required: bool = True
    constraints: Constraints = Field(default_factory=Constraints)
    description: str = Field(min_length=1, description="What the field means, for the API docs.")
    example: Any = Field(default=None, description="An example value, for the API docs.")

    @model_validator(mode="after")
    def _constraints_fit_kind(self) -> RequestField:
        c = self.constraints
        stray = c.given() - _KIND_CONSTRAINTS[self.kind]
        if stray:
            raise ValueError(
                f"constraint(s) {sorted(stray)} do not apply to kind {self.kind}; it takes "
                f"{sorted(_KIND_CONSTRAINTS[self.kind]) or 'none'}"
            )
        low = c.ge if c.ge is not None else c.gt
        high = c.le if c.le is not None else c.lt
        if c.ge is not None and c.gt is not None:
            raise ValueError("give either ge or gt, not both")
        if c.le is not None and c.lt is not None:
            raise ValueError("give either le or lt, not both")
        if low is not None and high is not None and low > high:
            raise ValueError(f"lower bound {low} is above upper bound {high}")
        if c.min_length is not None and c.max_length is not None and c.min_length > c.max_length:
            raise ValueError(f"min_length {c.min_length} exceeds max_length {c.max_length}")
        if self.kind == "category":
            self._check_category()
        if self.kind == "currency" and c.values is not None:
            unknown = sorted(set(c.values) - CURRENCIES)
            if unknown:
                raise ValueError(f"currencies {unknown} are not in feature_repo.reference")
        if self.kind == "country" and c.values is not None:
            bad = [v for v in c.values if not re.fullmatch(COUNTRY_PATTERN, v)]
            if bad:
                raise ValueError(f"countries {bad} are not ISO 3166-1 alpha-2 codes")
        if self.example is not None:
            try:
                self.parse(self.example)
            except ValueError as exc:
                raise ValueError(f"example {self.example!r} is refused: {exc}") from None
        return self

    def _check_category(self) -> None:
        c = self.constraints
        if not c.values:
            raise ValueError("a category needs its `values`")
        if len(set(c.values)) != len(c.values):
            raise ValueError(f"category values repeat: {c.values}")
        if c.unknown == "as_other":
            if c.other is None:
                raise ValueError("unknown: as_other needs `other`, the value unknown ones become")
            if c.other not in c.values:
                raise ValueError(f"other {c.other!r} is not one of the values {c.values}")
        elif c.other is not None:
            raise ValueError("`other` only applies with unknown: as_other")

    @property
    def unknown(self) -> UnknownTreatment:
        """Treatment of a category value outside the vocabulary (refuse unless declared)."""
        return self.constraints.unknown or "refuse"

    @property
    def canonicalize(self) -> bool:
        """Whether an ip_address value is rewritten to canonical text."""
        return self.constraints.canonicalize is not False

    def parse(self, value: Any, now: datetime | None = None) -> Any:
        """The value as training and serving use it, or ValueError saying what is wrong.

        Applies the kind and constraints: numbers within bounds, text shape, canonical IP
        addresses, currency and country codes, category vocabulary with its unknown treatment
        (``as_missing`` gives None), timestamp skew (checked when ``now`` is given). Missing
        values (None) pass for fields that are not required.
        """
        if value is None:
            if self.required:
                raise ValueError("is required")
            return None
        handler = _PARSERS[self.kind]
        return handler(self, value, now)


def _parse_number(spec: RequestField, value: Any, now: datetime | None) -> float | int:
    # numbers.Real takes numpy scalars too (loaders validate data frames with this).
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError("must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError("must be a finite number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    if spec.kind == "integer" and not number.is_integer():
        raise ValueError("must be a whole number")
    c = spec.constraints
    bounds: list[tuple[float | None, Callable[[Any, Any], bool], str]] = [
        (c.ge, operator.ge, "greater than or equal to"),
        (c.gt, operator.gt, "greater than"),
        (c.le, operator.le, "less than or equal to"),
        (c.lt, operator.lt, "less than"),
    ]
    for bound, holds, words in bounds:
        if bound is not None and not holds(number, bound):
            raise ValueError(f"must be {words} {bound:g}")
    return int(number) if spec.kind == "integer" else number


def _parse_text(spec: RequestField, value: Any, now: datetime | None) -> str:
    if not isinstance(value, str):
        raise ValueError("must be text")
    c = spec.constraints
    if c.min_length is not None and len(value) < c.min_length:
        raise ValueError(f"must have at least {c.min_length} characters")
    if c.max_length is not None and len(value) > c.max_length:
        raise ValueError(f"must have at most {c.max_length} characters")
    if c.pattern is not None and not re.search(c.pattern, value):
        raise ValueError(f"must match the pattern {c.pattern}")
    return value


# A dotted quad already in canonical form: four decimal octets, no leading zeros, each <= 255.
_CANONICAL_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


def _parse_ip(spec: RequestField, value: Any, now: datetime | None) -> str:
    # Parsed once per scored request (10,000 times for a full batch): an IPv4 address already in
    # canonical form, most of them, is recognised by one regular expression; other text goes
    # through ``ipaddress``, its results cached (addresses repeat in traffic).
    if not isinstance(value, str) or len(value) > IP_TEXT_MAX:
        raise ValueError("must be an IPv4 or IPv6 address in text form, e.g. 203.0.113.7")
    text = value.strip()
    canonical = text if _CANONICAL_IPV4.fullmatch(text) else _canonical_ip(text)
    return canonical if spec.canonicalize else value


@lru_cache(maxsize=8192)
def _canonical_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a valid IPv4 or IPv6 address (e.g. 203.0.113.7 or 2001:db8::1)"
        ) from None


def _parse_currency(spec: RequestField, value: Any, now: datetime | None) -> str:
    accepted = spec.constraints.values or CURRENCIES
    code = value.strip().upper() if isinstance(value, str) else ""
    if code not in accepted:
        raise ValueError(f"{value!r} is not a supported ISO 4217 currency code (e.g. USD, EUR)")
    return code


def _parse_country(spec: RequestField, value: Any, now: datetime | None) -> str:
    if not isinstance(value, str) or not re.fullmatch(COUNTRY_PATTERN, value):
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code (e.g. US)")
    values = spec.constraints.values
    if values is not None and value not in values:
        raise ValueError(f"{value!r} is not one of the accepted countries")
    return value


def _parse_category(spec: RequestField, value: Any, now: datetime | None) -> str | None:
    values = spec.constraints.values or []
    if isinstance(value, str) and value in values:
        return value
    if spec.unknown == "as_missing":
        return None
    if spec.unknown == "as_other":
        return spec.constraints.other
    raise ValueError(f"{value!r} is not one of {values}")


def _parse_timestamp(spec: RequestField, value: Any, now: datetime | None) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date and time") from None
    if not isinstance(value, datetime):
        raise ValueError("must be an ISO 8601 date and time")
    if value.tzinfo is None:
        raise ValueError("must carry a time zone, e.g. 2024-06-01T12:00:00Z")
    skew = spec.constraints.max_skew_seconds
    if now is not None and skew is not None and abs((value - now).total_seconds()) > skew:
        raise ValueError(f"must be within {skew:g} seconds of now")
    return value


_PARSERS: dict[str, Callable[[RequestField, Any, datetime | None], Any]] = {
    "identifier": _parse_text,
    "text": _parse_text,
    "ip_address": _parse_ip,
    "currency": _parse_currency,
    "country": _parse_country,
    "category": _parse_category,
    "number": _parse_number,
    "integer": _parse_number,
    "timestamp": _parse_timestamp,
}
