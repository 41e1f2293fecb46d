"""Domain specification: a business domain declared as data, validated before anything uses it.

A domain (one folder under ``feature_repo/``) holds its Feast repository and a ``domain.yaml``
that says, in the business's words, what is scored and how:

- ``resource``: the business object's URL segment (``POST /v1/{resource}/score`` and
  ``/score-batch``) and ``business_id``, the request field naming one object;
- ``request_fields``: the typed fields of a request, in order, with their constraints;
- ``entities``: which request fields are Feast entity keys (and which get a ``GET`` route);
- ``request_features``: request fields the model reads directly;
- ``label_column`` and ``labels`` (lowest to highest risk) plus the ``uncertain`` label, the
  ``threshold_rule`` that places the label thresholds on the validation split, and the
  ``uncertain`` policy (which entities are required evidence and which optional);
- ``reasons``: red flags in business words, as conditions on model inputs; they explain labels
  in serving and, summed, make the rules baseline a model must beat in training;
- ``segments``: columns of the training data that reports break results down by;
- ``object_name`` and ``score_description``: how the API documentation names the business object
  and the score; ``features``: each model input in business words, for explanations.

Nothing here names a domain: training and serving read these declarations instead of code.
"""

from __future__ import annotations

import ipaddress
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from itertools import pairwise
from numbers import Real
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
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


class DomainSpecError(ValueError):
    """A domain file that cannot be used; the message names the file and the fault."""


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


class EntitySpec(BaseModel):
    """A request field that is a Feast entity key."""

    model_config = ConfigDict(extra="forbid")

    join_key: Name = Field(description="Feast join key the field's value is looked up by.")
    route: Segment | None = Field(
        default=None,
        description="URL segment of `GET /v1/{route}/{id}/score`, scoring the entity alone.",
    )
    missing_reason: Name | None = Field(
        default=None,
        description="Reason code given when the store knows nothing of the entity "
        "(default: unknown_<join_key>).",
    )
    description: str = ""

    @property
    def unknown_reason(self) -> str:
        """Reason code of an entity the store knows nothing of."""
        return self.missing_reason or f"unknown_{self.join_key}"


ComparisonOp = Literal[">", ">=", "<", "<=", "==", "!="]
_COMPARE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ">": np.greater,
    ">=": np.greater_equal,
    "<": np.less,
    "<=": np.less_equal,
    "==": np.equal,
    "!=": np.not_equal,
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COMPARISON_TEXT = re.compile(
    rf"^\s*(?P<feature>\w+)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>{_NUMBER})"
    r"(?:\s*\*\s*(?P<times>\w+))?\s*$"
)
_PRESENCE_TEXT = re.compile(r"^\s*(?P<feature>\w+)\s+is\s+(?P<op>missing|present)\s*$")


class Condition(BaseModel):
    """One test on a model input: ``feature op value``, ``feature op value * other``, or presence.

    Written in the file as text (``card_txn_count_24h >= 3``, ``amount > 3 * card_mean_30d``,
    ``card_mean_30d is missing``) or as a mapping with the same parts. A comparison with a
    missing input does not hold; in the ratio form the other feature must also be above zero
    (a multiple of a zero or negative usual value says nothing).
    """

    model_config = ConfigDict(extra="forbid")

    feature: Name
    op: ComparisonOp | Literal["missing", "present"]
    value: float | None = None
    times: Name | None = Field(default=None, description="Compare with value * this feature.")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        match = _COMPARISON_TEXT.match(data)
        if match:
            parts = match.groupdict()
            return {**parts, "value": float(parts["value"])}
        match = _PRESENCE_TEXT.match(data)
        if match:
            return match.groupdict()
        raise ValueError(
            f"{data!r} is not a condition; write `feature >= 3`, `feature > 3 * other` or "
            "`feature is missing`"
        )

    @model_validator(mode="after")
    def _operands(self) -> Condition:
        if self.op in ("missing", "present"):
            if self.value is not None or self.times is not None:
                raise ValueError(f"`{self.op}` takes no value")
        elif self.value is None or not math.isfinite(self.value):
            raise ValueError(f"`{self.feature} {self.op}` needs a finite value")
        return self

    @property
    def features(self) -> tuple[str, ...]:
        """The model inputs the condition reads."""
        return (self.feature,) if self.times is None else (self.feature, self.times)

    def holds(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Whether the condition holds, per row of the columns (NaN or None: missing)."""
        left = _column(columns[self.feature])
        if self.op == "missing":
            return np.isnan(left)
        if self.op == "present":
            return ~np.isnan(left)
        assert self.value is not None  # checked by the validator
        right = np.full(len(left), self.value)
        known = ~np.isnan(left)
        if self.times is not None:
            other = _column(columns[self.times])
            with np.errstate(invalid="ignore"):
                known &= other > 0
            right = self.value * other
        out = np.zeros(len(left), dtype=bool)
        out[known] = _COMPARE[self.op](left[known], right[known])
        return out

    def __str__(self) -> str:
        if self.op in ("missing", "present"):
            return f"{self.feature} is {self.op}"
        value = f"{self.value:g}"
        return f"{self.feature} {self.op} {value}" + (f" * {self.times}" if self.times else "")


def _column(values: Any) -> np.ndarray:
    """A column as float64, NaN where missing."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return values.astype(np.float64, copy=False)
    return np.array([np.nan if v is None else v for v in np.ravel(values)], dtype=np.float64)


class Reason(BaseModel):
    """A red flag: a business sentence, and the conditions on model inputs that raise it."""

    model_config = ConfigDict(extra="forbid")

    code: Name = Field(description="Stable reason code returned to callers.")
    text: str = Field(min_length=1, description="What it means, in the business's words.")
    when: list[Condition] = Field(min_length=1, description="Every condition must hold.")
    report: bool = Field(default=True, description="Given as a reason for a risky label.")
    baseline: bool = Field(default=True, description="Scores a point in the rules baseline.")

    @field_validator("when", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | dict) else value

    @property
    def features(self) -> tuple[str, ...]:
        """The model inputs the flag reads, each once."""
        return tuple(dict.fromkeys(f for c in self.when for f in c.features))

    def holds(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Whether every condition holds, per row."""
        result = self.when[0].holds(columns)
        for condition in self.when[1:]:
            result = result & condition.holds(columns)
        return result


class PrecisionTarget(BaseModel):
    """Where one label starts: the lowest score whose precision reaches the target."""

    model_config = ConfigDict(extra="forbid")

    min_precision: float = Field(gt=0.0, le=1.0)
    fallback_quantile: float = Field(
        gt=0.0,
        lt=1.0,
        description="Score quantile used where the precision target cannot be reached, so the "
        "label still means the rarest scores.",
    )


class ThresholdRule(BaseModel):
    """How label thresholds are picked on the validation split (never on the holdout).

    ``precision_targets``: for every label above the lowest, the lowest validation score at
    which the share of positives among scores at or above it reaches ``min_precision``; where no
    score reaches it, the ``fallback_quantile`` of the validation scores. A label's threshold
    never exceeds the next riskier label's. Precision is what a review queue pays for: a label
    that is mostly wrong gets ignored.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["precision_targets"] = "precision_targets"
    split: Literal["validation"] = "validation"
    targets: dict[Name, PrecisionTarget] = Field(
        description="Label -> its target, for every label above the lowest, lowest risk first."
    )

    def describe(self) -> str:
        """One line saying how the thresholds were chosen (written into model packages)."""
        parts = [
            f"{label} = lowest score with precision >= {t.min_precision:g} "
            f"(else quantile {t.fallback_quantile:g})"
            for label, t in reversed(self.targets.items())
        ]
        return f"{self.split} split: " + "; ".join(parts)


class UncertainSpec(BaseModel):
    """When the evidence is too thin to give a normal label.

    An entity is *unknown* when the online store has no row for it or (with
    ``stale_counts_as_unknown``) only one older than its feature view's TTL. Optional entities
    (evidence most objects lack, e.g. a credit history) never count as unknown; their absence is
    still given as a reason.
    """

    model_config = ConfigDict(extra="forbid")

    required_entities: list[Name] = Field(
        default_factory=list, description="Join keys that must be known, else `uncertain`."
    )
    optional_entities: list[Name] = Field(
        default_factory=list, description="Join keys whose absence is reported, never counted."
    )
    max_unknown_entities: int = Field(
        default=1, ge=0, description="More unknown (non-optional) entities gives `uncertain`."
    )
    stale_counts_as_unknown: bool = True
    report_label_at_or_above: str | None = Field(
        default=None,
        description="A score reaching this label is reported even on thin evidence (a model "
        "alarm is worth acting on); `never` to always answer uncertain; default: the riskiest "
        "label.",
    )


class SegmentSpec(BaseModel):
    """A breakdown of reports by one column of the training data.

    By value; by numeric ``bins``; or, with ``differs_from``, into rows where the column equals
    another and rows where it does not. The column is a request field or any other column of
    the training data (an evaluation-only one, say); reports skip a segment whose columns a
    frame lacks.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Shown in reports.")
    field: Name
    bins: list[float] | None = Field(
        default=None, description="Ascending bin edges (left-closed), for numeric columns."
    )
    differs_from: Name | None = Field(default=None, description="Column to compare with.")

    @field_validator("bins")
    @classmethod
    def _ascending(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) < 2 or any(b <= a for a, b in pairwise(value))):
            raise ValueError("bins need two or more strictly ascending edges")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> SegmentSpec:
        if self.bins is not None and self.differs_from is not None:
            raise ValueError("a segment has bins or differs_from, not both")
        return self


class FeatureText(BaseModel):
    """A model input in business words, for explanations.

    ``text`` is a Python format string of ``value`` (``card used from {value:g} countries in the
    last 24 h``); ``missing`` is said when the input has no value. In the file, a plain string
    is the ``text``.
    """

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="Sentence with {value}, e.g. {value:g}.")
    missing: str | None = Field(
        default=None, description="Sentence for a missing value (default: `<name>: unknown`)."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        return {"text": data} if isinstance(data, str) else data

    @field_validator("text")
    @classmethod
    def _formats(cls, value: str) -> str:
        if "{value" not in value:
            raise ValueError(f"{value!r} does not show the value; write {{value}} or {{value:g}}")
        try:
            value.format(value=1.5)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{value!r} is not a format string of `value`: {exc}") from None
        return value

    def say(self, name: str, value: float | None) -> str:
        """The sentence for one value (None or NaN: missing)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.missing or f"{name}: unknown"
        return self.text.format(value=value)


class DomainSpec(BaseModel):
    """A business domain: what is scored, from which request, into which labels, and why."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: Name = Field(description="Domain name, e.g. for metrics labels.")
    description: str = ""
    resource: Segment = Field(description="URL segment of POST /v1/{resource}/score.")
    business_id: Name = Field(description="Request field identifying the business object.")
    timestamp_field: Name = Field(
        default="event_timestamp", description="Event time column of the training data."
    )
    request_fields: dict[Name, RequestField] = Field(
        min_length=1, description="Fields of a request, in order."
    )
    entities: dict[Name, EntitySpec] = Field(description="Request field -> its Feast entity.")
    request_features: list[Name] = Field(
        default_factory=list, description="Request fields the model reads directly, in order."
    )
    label_column: Name = Field(description="Label column of the training data (1 = positive).")
    labels: list[Name] = Field(min_length=2, description="Label vocabulary, lowest risk first.")
    uncertain_label: Name = "uncertain"
    threshold_rule: ThresholdRule
    uncertain: UncertainSpec = Field(default_factory=UncertainSpec)
    reasons: list[Reason] = Field(default_factory=list)
    segments: list[SegmentSpec] = Field(default_factory=list)
    model_name: Name = Field(description="Name of the domain's model packages.")
    feature_service: Name = Field(description="FeatureService trained by default.")
    training_data: str = Field(
        description="Labelled business objects (parquet) that training reads: the request "
        "fields, the label column and the event time; relative to the domain folder."
    )
    object_name: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9]*( [a-z0-9]+)*$",
        max_length=64,
        description="The business object in words, singular (`transaction`, `loan application`): "
        "names the API's schemas (Transaction, LoanApplication) and documentation. Default: the "
        "resource less a final s, hyphens as spaces.",
    )
    score_description: str | None = Field(
        default=None,
        min_length=1,
        description="What the score means, for the API documentation (e.g. `Fraud probability "
        "in [0, 1].`). Default: the probability of a positive label column.",
    )
    features: dict[Name, FeatureText] = Field(
        default_factory=dict,
        description="Model input -> its sentence in business words, for explanations; inputs "
        "not listed are shown by name.",
    )

    _folder: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self) -> DomainSpec:
        fields = self.request_fields
        business = fields.get(self.business_id)
        if business is None:
            raise ValueError(f"business_id {self.business_id!r} is not a request field")
        if business.kind != "identifier" or not business.required:
            raise ValueError(f"business_id {self.business_id!r} must be a required identifier")
        self._check_entities()
        for name in self.request_features:
            field = fields.get(name)
            if field is None:
                raise ValueError(f"request feature {name!r} is not a request field")
            if field.kind not in NUMERIC_KINDS:
                raise ValueError(
                    f"request feature {name!r} is a {field.kind}; the model reads numbers only "
                    "(encode other kinds with an on-demand feature)"
                )
        if len(set(self.request_features)) != len(self.request_features):
            raise ValueError("request_features repeat a field")
        for column in (self.label_column, self.timestamp_field):
            if column in fields:
                raise ValueError(f"{column!r} is a request field; callers cannot send it")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeat: {self.labels}")
        if self.uncertain_label in self.labels:
            raise ValueError(f"uncertain_label {self.uncertain_label!r} is also a label")
        self._check_thresholds()
        self._check_uncertain()
        codes = [r.code for r in self.reasons] + [e.unknown_reason for e in self.entities.values()]
        repeated = sorted({c for c in codes if codes.count(c) > 1})
        if repeated:
            raise ValueError(f"reason codes repeat: {repeated}")
        for segment in self.segments:
            field = fields.get(segment.field)
            if segment.bins is not None and field is not None and field.kind not in NUMERIC_KINDS:
                raise ValueError(f"segment {segment.name}: bins need a number or integer field")
        return self

    def _check_entities(self) -> None:
        if not self.entities:
            raise ValueError("a domain needs at least one entity")
        for name in self.entities:
            field = self.request_fields.get(name)
            if field is None:
                raise ValueError(f"entity field {name!r} is not a request field")
            if field.kind not in KEY_KINDS:
                raise ValueError(
                    f"entity field {name!r} is a {field.kind}; entity keys are text "
                    f"({', '.join(sorted(KEY_KINDS))})"
                )
        keys = [e.join_key for e in self.entities.values()]
        if len(set(keys)) != len(keys):
            raise ValueError(f"entities share a join key: {keys}")
        routes = [e.route for e in self.entities.values() if e.route is not None]
        if len(set(routes)) != len(routes) or self.resource in routes:
            raise ValueError(
                f"entity routes must differ from each other and from the resource: {routes}"
            )

    def _check_thresholds(self) -> None:
        expected = self.labels[1:]
        given = list(self.threshold_rule.targets)
        if given != expected:
            raise ValueError(
                f"threshold_rule targets must name the labels above the lowest, lowest risk "
                f"first: {expected}, not {given}"
            )
        targets = list(self.threshold_rule.targets.values())
        for lower, higher, name in zip(targets, targets[1:], expected[1:], strict=False):
            if higher.min_precision < lower.min_precision:
                raise ValueError(f"{name}: min_precision is below that of a less risky label")
            if higher.fallback_quantile < lower.fallback_quantile:
                raise ValueError(f"{name}: fallback_quantile is below that of a less risky label")

    def _check_uncertain(self) -> None:
        policy = self.uncertain
        keys = set(self.join_keys)
        for group in ("required_entities", "optional_entities"):
            unknown = sorted(set(getattr(policy, group)) - keys)
            if unknown:
                raise ValueError(
                    f"uncertain.{group}: {unknown} are not join keys of {sorted(keys)}"
                )
        both = sorted(set(policy.required_entities) & set(policy.optional_entities))
        if both:
            raise ValueError(f"uncertain: {both} are both required and optional")
        floor = policy.report_label_at_or_above
        if floor is not None and floor != "never" and floor not in self.labels[1:]:
            raise ValueError(
                f"uncertain.report_label_at_or_above {floor!r} must be `never` or one of "
                f"{self.labels[1:]}"
            )

    # --- what consumers read -----------------------------------------------------------------

    @property
    def folder(self) -> Path | None:
        """Folder the spec was loaded from (the domain's Feast repository)."""
        return self._folder

    @property
    def object_words(self) -> str:
        """The business object in words, singular (e.g. `loan application`)."""
        if self.object_name:
            return self.object_name
        return self.resource.removesuffix("s").replace("-", " ")

    @property
    def schema_name(self) -> str:
        """The request's schema name in the API (e.g. `LoanApplication`)."""
        return "".join(word.capitalize() for word in self.object_words.split())

    @property
    def collection_field(self) -> str:
        """Field of a batch request holding its objects (the resource, e.g. `loan_applications`)."""
        return self.resource.replace("-", "_")

    @property
    def score_meaning(self) -> str:
        """What the score means, for the API documentation."""
        return (
            self.score_description
            or f"Probability that `{self.label_column}` is 1 (the riskiest outcome), in [0, 1]."
        )

    def feature_text(self, name: str, value: float | None) -> str:
        """A model input and its value in business words (by name when not declared)."""
        declared = self.features.get(name)
        if declared is not None:
            return declared.say(name, value)
        if value is None or math.isnan(value):
            return f"{name}: unknown"
        return f"{name} = {value:g}"

    @property
    def join_keys(self) -> list[str]:
        """Feast join keys of the entities, in request order."""
        return [e.join_key for e in self.entities.values()]

    @property
    def entity_mapping(self) -> dict[str, str]:
        """Request field -> Feast join key."""
        return {name: e.join_key for name, e in self.entities.items()}

    @property
    def report_floor(self) -> str:
        """Label from which a score is reported on thin evidence (or `never`)."""
        return self.uncertain.report_label_at_or_above or self.labels[-1]

    @property
    def training_data_path(self) -> Path:
        """Where the labelled training data is, resolved against the domain folder."""
        path = Path(self.training_data)
        if path.is_absolute() or self._folder is None:
            return path
        return (self._folder / path).resolve()

    def reasons_for(
        self, features: Sequence[str], *, report: bool | None = None, baseline: bool | None = None
    ) -> list[Reason]:
        """Reasons whose inputs are all among ``features`` (optionally by use)."""
        available = set(features)
        return [
            r
            for r in self.reasons
            if set(r.features) <= available
            and (report is None or r.report == report)
            and (baseline is None or r.baseline == baseline)
        ]


def _location(error: Mapping[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def load_domain(path: str | Path) -> DomainSpec:
    """Read and validate a domain file (``path`` is the file or its folder).

    Raises DomainSpecError naming the file, the place in it and the fault.
    """
    path = Path(path)
    file = path / DOMAIN_FILE if path.is_dir() else path
    try:
        data = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise DomainSpecError(f"{file}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise DomainSpecError(f"{file}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DomainSpecError(f"{file}: must be a mapping of domain settings")
    try:
        spec = DomainSpec.model_validate(data)
    except ValidationError as exc:
        faults = "; ".join(f"{_location(e)}: {e['msg']}" for e in exc.errors())
        raise DomainSpecError(f"{file}: {faults}") from None
    spec._folder = file.resolve().parent
    return spec
