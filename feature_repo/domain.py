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

Nothing here names a domain: training and serving read these declarations instead of code. The
field kinds and their parsers live in ``domain_fields``, the decision rules in ``domain_rules``;
this module assembles them into the whole file and checks the parts against each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from feature_repo.domain_fields import (
    IP_TEXT_MAX,
    KEY_KINDS,
    NAME_PATTERN,
    NUMERIC_KINDS,
    SEGMENT_PATTERN,
    Constraints,
    FieldKind,
    Name,
    RequestField,
    Segment,
    UnknownTreatment,
)
from feature_repo.domain_rules import (
    Condition,
    EntitySpec,
    FeatureText,
    PrecisionTarget,
    Reason,
    SegmentSpec,
    ThresholdRule,
    UncertainSpec,
)

__all__ = [
    "DOMAIN_FILE",
    "IP_TEXT_MAX",
    "KEY_KINDS",
    "NAME_PATTERN",
    "NUMERIC_KINDS",
    "SEGMENT_PATTERN",
    "Condition",
    "Constraints",
    "DomainSpec",
    "DomainSpecError",
    "EntitySpec",
    "FeatureText",
    "FieldKind",
    "Name",
    "PrecisionTarget",
    "Reason",
    "RequestField",
    "Segment",
    "SegmentSpec",
    "ThresholdRule",
    "UncertainSpec",
    "UnknownTreatment",
    "load_domain",
]

DOMAIN_FILE = "domain.yaml"


class DomainSpecError(ValueError):
    """A domain file that cannot be used; the message names the file and the fault."""


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
