"""Decision rules of a domain: entities, red-flag reasons, thresholds, uncertainty, segments.

The parts of ``domain.yaml`` that say how a score becomes an answer: which request fields are
Feast entity keys (``EntitySpec``), the red flags in business words (``Reason`` made of
``Condition`` s evaluated on model inputs, column-wise), where label thresholds go
(``ThresholdRule``), when evidence is too thin (``UncertainSpec``), how reports break results down
(``SegmentSpec``) and how each model input reads in an explanation (``FeatureText``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from itertools import pairwise
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from feature_repo.domain_fields import (
    Name,
    Segment,
)


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
