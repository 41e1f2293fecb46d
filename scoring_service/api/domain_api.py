"""The business API of a domain, built from its declaration (``feature_repo/<domain>/domain.yaml``).

Nothing here knows a domain: for each served domain, :meth:`DomainApi.build` turns its
``DomainSpec`` into

- the request model (``POST /v1/{resource}/score``): one field per declared request field, in
  order, ``extra="forbid"``, with the declared constraints and examples. Numbers and text keep
  pydantic's own typed checks (bounds, lengths, patterns: the same messages callers had); the
  kinds that need more (IP addresses, currencies, countries, categories, timestamps) run the
  declaration's own ``RequestField.parse`` as a validator, so a refusal names the field and a
  value is used exactly as training used it (canonical IP text, upper-case currency, a category's
  unknown treatment). Its OpenAPI schema states what the parse enforces, so a request valid by
  the document is never refused for its shape
  (``tests/scoring_service/api/test_openapi_contract.py``);
- the batch request (``POST /v1/{resource}/score-batch``, the same object schema, at most
  ``Settings.max_batch_size`` objects) and the answers: the business id echoed
  under its own field name, the score, the label (the domain's vocabulary and its uncertain
  label), reasons, model version, variant and feature freshness;
- the ``GET /v1/{route}/{id}/score`` routes of the entities that declare one, their path value
  checked like the request field;
- the explanation answer (``GET /v1/{resource}/{id}/explanation``).

Schema names in the OpenAPI document come from the domain's ``object_name`` (``Transaction``,
``TransactionScoreResponse``, ``LoanApplication``, ...), so several domains live in one document.

Why one module of this length: a domain's request, batch and answer models and their OpenAPI
descriptions are built together from one declaration, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    create_model,
)
from pydantic_core import SchemaError

from feature_repo import clock
from feature_repo.domain import IP_TEXT_MAX, NUMERIC_KINDS, DomainSpec, EntitySpec, RequestField
from feature_repo.reference import COUNTRY_PATTERN, CURRENCIES
from scoring_service.core.errors import InvalidRequest, validation_message
from scoring_service.core.schemas import EntityFreshness

MAX_BATCH_ITEMS = 10_000
"""Most objects one score-batch body may hold (``Settings.max_batch_size`` can only lower it)."""

ENTITY_ID_SUFFIX = "_id"


class FeatureContribution(BaseModel):
    """One model input's part in an answer, in business words."""

    feature: str = Field(description="Model input (feature name).")
    value: float | None = Field(description="Its value in the answer (null: missing).")
    contribution: float = Field(
        description="TreeSHAP contribution to the raw score (log-odds); positive raises the risk."
    )
    text: str = Field(description="The input and its value in business words.")
    package: str | None = Field(
        default=None,
        description="The package whose input this is, when the answer was not the logged "
        "model_version's alone (an ensemble's members).",
    )
    weight: float | None = Field(
        default=None, description="That package's share of the answer (contribution included)."
    )


class ExplainedBy(BaseModel):
    """One package that decided a logged answer, and its share of it."""

    package: str = Field(description="`name/version` of the package.")
    weight: float = Field(description="Its share of the answer (1 for a single package).")
    raw_score: float = Field(description="Its raw score (log-odds) for its logged input.")
    expected_value: float = Field(description="Its raw score with nothing known.")


def _bound(value: float | None, integer: bool) -> float | int | None:
    """A declared bound, as an int for integer fields (so the schema shows 18, not 18.0)."""
    if value is None or not integer or not float(value).is_integer():
        return value
    return int(value)


def _whole_number(value: Any) -> Any:
    """A JSON number without a fractional part as an int (22.0 is the integer 22)."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


IP_SCHEMA: dict[str, Any] = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
"""An ip_address field in the OpenAPI document: an IPv4 or an IPv6 address."""

TRIMMED_PATTERN = r"^[^\s\x85](?:[\s\S]*[^\s\x85])?(?![\s\S])"
"""Text that neither starts nor ends with white space (the Unicode white space the service
strips; U+0085 is not in ECMAScript's ``\\s``). It ends with "no character follows" rather than
``$``, which Python's ``re`` also matches before a final newline."""

SKEW_EXTENSION = "x-max-skew-seconds"
"""OpenAPI extension on a timestamp field: the most seconds it may be away from now."""

PARSED_TEXTS_KEPT = 16_384
"""Texts whose parsed value each request field remembers (then it starts afresh)."""

_UNSEEN = object()


def _remembered(field: RequestField) -> Callable[[Any], Any]:
    """``field.parse`` for a kind whose result depends on the text alone (IP address,
    currency, country, category), remembering the values of the texts it accepted: a batch
    repeats its currencies and countries thousands of times. A refused text is parsed again
    each time (the same message); anything but text is never remembered."""
    seen: dict[str, Any] = {}

    def parse(value: Any) -> Any:
        if type(value) is not str:
            return field.parse(value)
        parsed = seen.get(value, _UNSEEN)
        if parsed is _UNSEEN:
            parsed = field.parse(value)
            if len(seen) >= PARSED_TEXTS_KEPT:
                seen.clear()
            seen[value] = parsed
        return parsed

    return parse


def field_parts(field: RequestField) -> tuple[Any, dict[str, Any], list[Any]]:
    """One request field as (base type, pydantic constraints, validators and schema metadata):
    ``Field(**constraints)`` in a request body, ``Path(**constraints)`` in a URL."""
    c = field.constraints
    kind = field.kind
    if kind in ("identifier", "text"):
        lengths = {"min_length": c.min_length, "max_length": c.max_length, "pattern": c.pattern}
        shape: dict[str, Any] = {k: v for k, v in lengths.items() if v is not None}
        if c.min_length and c.pattern is None:
            # A request body is stripped before its lengths are checked: the document says the
            # value neither starts nor ends with white space, so its length is the one checked.
            shape["json_schema_extra"] = {"pattern": TRIMMED_PATTERN}
        return str, shape, []
    if kind in ("number", "integer"):
        integer = kind == "integer"
        bounds = {
            name: _bound(getattr(c, name), integer)
            for name in ("ge", "gt", "le", "lt")
            if getattr(c, name) is not None
        }
        # Strict: a JSON number, never numeric text or a boolean, as the declaration reads it;
        # an integer field takes 22.0 too, an integer in JSON Schema's sense as in the
        # declaration's.
        if integer:
            return int, {"strict": True, **bounds}, [BeforeValidator(_whole_number)]
        return float, {"strict": True, "allow_inf_nan": False, **bounds}, []

    parse = _remembered(field)
    if kind == "ip_address":
        # Before: any JSON value gets the declaration's message, then the text as the model
        # reads it (canonical when declared so). Documented as the formats a client can check;
        # the service also takes surrounding white space and non-canonical forms.
        schema = WithJsonSchema({**IP_SCHEMA, "maxLength": IP_TEXT_MAX})
        return str, {"max_length": IP_TEXT_MAX}, [BeforeValidator(parse), schema]
    if kind == "currency":
        # Documented as the codes accepted (lower case is accepted too, read as upper case).
        codes = list(c.values) if c.values is not None else sorted(CURRENCIES)
        schema = WithJsonSchema({"type": "string", "enum": codes})
        return str, {"min_length": 3, "max_length": 3}, [BeforeValidator(parse), schema]
    if kind == "country":
        shape = {"min_length": 2, "max_length": 2, "pattern": COUNTRY_PATTERN}
        if c.values is not None:
            schema = WithJsonSchema({"type": "string", "enum": list(c.values)})
            return str, shape, [AfterValidator(parse), schema]
        return str, shape, [AfterValidator(parse)]
    if kind == "category":
        values = list(c.values or [])
        if field.unknown == "refuse":
            schema = WithJsonSchema({"type": "string", "enum": values})
            return str, {}, [BeforeValidator(parse), schema]
        # Any text is accepted; outside the vocabulary it becomes `other` or missing (None).
        schema = WithJsonSchema({"type": "string", "examples": values})
        return str | None, {}, [BeforeValidator(parse), schema]
    if kind == "timestamp":

        def within_skew(value: datetime) -> datetime:
            return field.parse(value, now=clock.now())  # type: ignore[no-any-return]

        return datetime, {}, [AfterValidator(within_skew)]
    raise ValueError(f"no request type for kind {kind}")  # pragma: no cover - Literal-checked


def field_type(field: RequestField, info: Callable[..., Any] = Field) -> Any:
    """The annotation of one request field, its kind's checks included (never optional);
    ``info`` carries the constraints (``Field``; FastAPI's ``Path`` for a URL segment)."""
    base, constraints, extra = field_parts(field)
    return Annotated[(base, info(**constraints), *extra)]  # type: ignore[return-value]


def _description(field: RequestField) -> str:
    """The declared description, plus what a category does with values outside its list and
    how far from now a timestamp may be."""
    text = field.description
    skew = field.constraints.max_skew_seconds
    if field.kind == "timestamp" and skew is not None:
        text = f"{text} Refused unless within {skew:g} seconds of the service's clock."
    if field.kind == "category" and field.unknown != "refuse":
        values = ", ".join(field.constraints.values or [])
        fate = (
            f"scored as {field.constraints.other}"
            if field.unknown == "as_other"
            else "scored as unknown"
        )
        text = f"{text} One of {values}; any other value is {fate}."
    return text


def request_model(spec: DomainSpec) -> type[BaseModel]:
    """The request model of ``POST /v1/{resource}/score``."""
    fields: dict[str, Any] = {}
    for name, field in spec.request_fields.items():
        annotation = field_type(field)
        info: dict[str, Any] = {"description": _description(field)}
        skew = field.constraints.max_skew_seconds
        if field.kind == "timestamp" and skew is not None:
            # What no JSON Schema keyword can say (a bound relative to now), for the machines.
            info["json_schema_extra"] = {SKEW_EXTENSION: _bound(skew, integer=True)}
        if field.required:
            fields[name] = (annotation, Field(**info))
        else:
            fields[name] = (annotation | None, Field(default=None, **info))
    example = {
        name: field.example
        for name, field in spec.request_fields.items()
        if field.example is not None
    }

    def build(engine: Literal["rust-regex", "python-re"]) -> type[BaseModel]:
        config = ConfigDict(
            extra="forbid",
            str_strip_whitespace=True,
            regex_engine=engine,
            json_schema_extra={"examples": [example]} if example else None,
        )
        return create_model(  # type: ignore[call-overload,no-any-return]
            spec.schema_name,
            __config__=config,
            __doc__=f"A {spec.object_words} to score, in business terms.",
            __module__=__name__,
            **fields,
        )

    try:
        return build("rust-regex")
    except SchemaError:
        # A declared pattern only Python's `re` understands (look-arounds, back-references).
        return build("python-re")


@dataclass(frozen=True)
class EntityRoute:
    """``GET /v1/{segment}/{field}/score``: an entity scored from what the store knows of it."""

    field: str  # request field, also the path parameter's name
    entity: EntitySpec
    path: str
    name: str  # route name (and metric label): score_<entity name>
    entity_name: str  # how answers name the entity: the field less a trailing _id
    annotation: Any  # the path value's type (the request field's)
    parse: Callable[[str], str]  # path value -> entity key, InvalidRequest naming the field


def path_value(name: str, annotation: Any) -> Callable[[str], str]:
    """A converter checking a path value against a field's type; errors name the field."""
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)

    def convert(value: str) -> str:
        try:
            return adapter.validate_python(value)  # type: ignore[no-any-return]
        except ValidationError as exc:
            errors = [{**e, "loc": (name, *e["loc"])} for e in exc.errors()]
            raise InvalidRequest(validation_message(errors)) from None

    return convert


@dataclass(frozen=True)
class DomainApi:
    """Everything the service builds from one domain's declaration."""

    spec: DomainSpec
    request: type[BaseModel]
    batch_request: type[BaseModel]
    result: type[BaseModel]
    response: type[BaseModel]
    batch_response: type[BaseModel]
    entity_response: type[BaseModel]
    explanation: type[BaseModel]
    entity_routes: tuple[EntityRoute, ...]
    labels: tuple[str, ...]  # the vocabulary, lowest risk first, then the uncertain label

    @property
    def name(self) -> str:
        """The domain's name (metrics label, prediction-log column)."""
        return self.spec.name

    @property
    def business_id(self) -> str:
        """Request field naming one business object."""
        return self.spec.business_id

    @property
    def collection(self) -> str:
        """Field of a batch request that holds its objects."""
        return self.spec.collection_field

    @property
    def score_path(self) -> str:
        return f"/v1/{self.spec.resource}/score"

    @property
    def batch_path(self) -> str:
        return f"/v1/{self.spec.resource}/score-batch"

    @property
    def explanation_path(self) -> str:
        return f"/v1/{self.spec.resource}/{{{self.business_id}}}/explanation"

    @property
    def score_route(self) -> str:
        """Route name of the single-object score route: score_<object>."""
        return "score_" + "_".join(self.spec.object_words.split())

    @property
    def business_id_type(self) -> Any:
        """The business id's type (its path value in explanation routes)."""
        return field_type(self.spec.request_fields[self.business_id])

    @classmethod
    def build(cls, spec: DomainSpec, max_batch_size: int = MAX_BATCH_ITEMS) -> DomainApi:
        """The request and answer models and entity routes of a domain; a score-batch call
        holds at most ``max_batch_size`` objects (``Settings.max_batch_size``)."""
        if not 1 <= max_batch_size <= MAX_BATCH_ITEMS:
            raise ValueError(f"max_batch_size must be in [1, {MAX_BATCH_ITEMS}]")
        schema = spec.schema_name
        obj = spec.object_words
        label_names = (*spec.labels, spec.uncertain_label)
        label = Literal[label_names]  # type: ignore[valid-type]
        request = request_model(spec)
        batch_request = create_model(  # type: ignore[call-overload]
            f"{schema}ScoreBatchRequest",
            __config__=ConfigDict(extra="forbid"),
            __doc__=f"Several {obj}s scored in one call (one feature read, one model call).",
            __module__=__name__,
            **{
                spec.collection_field: (
                    list[request],  # type: ignore[valid-type]
                    Field(min_length=1, max_length=max_batch_size),
                )
            },
        )
        answer_fields: dict[str, Any] = {
            "score": (float | None, Field(description=spec.score_meaning)),
            "label": (label, Field(description=_label_description(spec))),
            "reasons": (
                list[str],
                Field(description="Why this label: red flags and evidence gaps."),
            ),
            "model_version": (str, Field(description="Model package that answered.")),
            "variant": (
                str,
                Field(description="Variant of the deployment that answered (e.g. champion)."),
            ),
            "feature_freshness": (
                dict[str, EntityFreshness],
                Field(description="Per join key: what the online store knew of the entity."),
            ),
        }
        result = create_model(  # type: ignore[call-overload]
            f"{schema}ScoreResult",
            __doc__=f"The answer for one {obj}.",
            __module__=__name__,
            **{spec.business_id: (str, Field(description="The caller's id, echoed."))},
            **answer_fields,
        )
        response = create_model(  # type: ignore[call-overload]
            f"{schema}ScoreResponse",
            __base__=result,
            __doc__=f"The answer to POST /v1/{spec.resource}/score.",
            __module__=__name__,
            request_id=(str, Field(description="Id of this request, as in X-Request-ID.")),
        )
        batch_response = create_model(  # type: ignore[call-overload]
            f"{schema}ScoreBatchResponse",
            __doc__=f"The answer to POST /v1/{spec.resource}/score-batch, results in request "
            "order.",
            __module__=__name__,
            results=(list[result], ...),  # type: ignore[valid-type]
            model_version=(
                str,
                Field(
                    description="Model package that answered (a deployment's name when "
                    "several models decide)."
                ),
            ),
            request_id=(str, ...),
        )
        entity_response = create_model(  # type: ignore[call-overload]
            f"{schema}EntityScoreResponse",
            __doc__=f"The answer for an entity-id call: the risk of a typical {obj} of this "
            "entity.",
            __module__=__name__,
            entity=(str, Field(description="Which entity was scored.")),
            entity_id=(str, Field(description="Its id, as the store keys it.")),
            **answer_fields,
            request_id=(str, ...),
        )
        explanation = create_model(  # type: ignore[call-overload]
            f"{schema}Explanation",
            __doc__=f"Why a logged answer for one {obj} came out as it did.",
            __module__=__name__,
            **{spec.business_id: (str, Field(description="The caller's id of the object."))},
            request_id=(str, Field(description="Request id of the answer explained.")),
            answered_at=(datetime, Field(description="When the answer was given.")),
            model_version=(str, ...),
            variant=(str, ...),
            score=(float | None, Field(description=spec.score_meaning)),
            label=(label, ...),
            reasons=(list[str], ...),
            raw_score=(
                float,
                Field(
                    description="The model's raw score (log-odds) for the logged input; the "
                    "score is its logistic function."
                ),
            ),
            expected_value=(
                float,
                Field(
                    description="The raw score with nothing known; it plus every input's "
                    "contribution equals raw_score."
                ),
            ),
            explained_by=(
                list[ExplainedBy],
                Field(
                    description="The packages that decided the answer, with their shares: one "
                    "package, or an ensemble's members (raw_score is their weighted sum)."
                ),
            ),
            contributions=(
                list[FeatureContribution],
                Field(description="The inputs that moved the raw score most, largest first."),
            ),
            feature_freshness=(
                dict[str, EntityFreshness],
                Field(description="Per join key: what the store knew of the entity then."),
            ),
        )
        routes = []
        for name, entity in spec.entities.items():
            if entity.route is None:
                continue
            annotation = field_type(spec.request_fields[name])
            entity_name = name.removesuffix(ENTITY_ID_SUFFIX) or name
            routes.append(
                EntityRoute(
                    field=name,
                    entity=entity,
                    path=f"/v1/{entity.route}/{{{name}}}/score",
                    name=f"score_{entity_name}",
                    entity_name=entity_name,
                    annotation=annotation,
                    parse=path_value(name, annotation),
                )
            )
        return cls(
            spec=spec,
            request=request,
            batch_request=batch_request,
            result=result,
            response=response,
            batch_response=batch_response,
            entity_response=entity_response,
            explanation=explanation,
            entity_routes=tuple(routes),
            labels=label_names,
        )


def _label_description(spec: DomainSpec) -> str:
    labels = ", ".join(spec.labels)
    return (
        f"Business label, lowest risk first: {labels}; {spec.uncertain_label} when the evidence "
        "is too thin to say."
    )


def request_body(spec: DomainSpec, row: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON request body from a row of the domain's data (a training-data row, say): its
    request fields taken by name, numbers as numbers, timestamps in ISO 8601, every other kind
    as text; missing values (None, NaN) are left out."""
    body: dict[str, Any] = {}
    for name, field in spec.request_fields.items():
        if name not in row:
            continue
        value = row[name]
        if value is None or value != value:  # NaN and NaT are not equal to themselves
            continue
        if field.kind in NUMERIC_KINDS:
            body[name] = int(value) if field.kind == "integer" else float(value)
        elif isinstance(value, datetime):
            body[name] = value.isoformat()
        else:
            body[name] = str(value)
    return body
