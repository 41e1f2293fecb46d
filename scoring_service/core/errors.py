"""Errors in business terms: a stable code, the stage that refused, a sentence to act on.

Every failure the service knows about is a subclass of ``ScoringError``; handlers turn them into
``{code, stage, message, request_id}`` through :func:`error_response`, the one place that body is
built. Third-party exceptions are mapped where they happen
(``raise FeatureStoreUnavailable(...) from exc``); anything unknown gets a generic message, never
the exception's text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from starlette.responses import JSONResponse

from scoring_service.core import metrics
from scoring_service.core.logs import current_request_id


class ScoringError(Exception):
    """Base of all errors the service reports to callers."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    stage: ClassVar[str] = "service"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(ScoringError):
    """The request does not describe a valid business object of its domain."""

    status_code = 422
    code = "invalid_request"
    stage = "request"


class BatchTooLarge(ScoringError):
    """A batch call carried more business objects than allowed."""

    status_code = 413
    code = "batch_too_large"
    stage = "request"


class EntityMappingError(ScoringError):
    """The business object lacks a field the model's entity mapping needs."""

    status_code = 422
    code = "entity_mapping_failed"
    stage = "domain_mapping"


class FeatureStoreUnavailable(ScoringError):
    """The online store could not be read."""

    status_code = 503
    code = "feature_store_unavailable"
    stage = "features"


class ModelUnavailable(ScoringError):
    """The model could not produce a score."""

    status_code = 503
    code = "model_unavailable"
    stage = "predict"


class ModelPackageInvalid(ScoringError):
    """A model package is damaged or does not match the live feature store."""

    status_code = 409
    code = "model_package_invalid"
    stage = "registry"


class DeploymentRefused(ScoringError):
    """A deployment cannot go live (unknown package, weights, cycle, ...); the live one stays."""

    status_code = 409
    code = "deployment_invalid"
    stage = "deployment"


class NotReady(ScoringError):
    """The service has not finished starting (or is shutting down)."""

    status_code = 503
    code = "not_ready"
    stage = "service"


class PayloadTooLarge(ScoringError):
    """The request body is larger than the service accepts."""

    status_code = 413
    code = "payload_too_large"
    stage = "request"


class Unauthorized(ScoringError):
    """No API key, or one the service does not know."""

    status_code = 401
    code = "unauthorized"
    stage = "auth"


class Forbidden(ScoringError):
    """A known API key without the scope the route needs."""

    status_code = 403
    code = "forbidden"
    stage = "auth"


class Overloaded(ScoringError):
    """More work in flight than the service accepts; refused at once instead of queued."""

    status_code = 503
    code = "overloaded"
    stage = "service"


class ConfigurationInvalid(ScoringError):
    """The service's own configuration prevents it from starting safely."""

    status_code = 500
    code = "configuration_invalid"
    stage = "service"


class AnswerNotLogged(ScoringError):
    """An explanation was asked for an answer the prediction log does not hold."""

    status_code = 404
    code = "answer_not_logged"
    stage = "explanation"


UNEXPECTED_MESSAGE = (
    "The service hit an unexpected error; it has been logged under this request id. "
    "Retry, and report the request id if it persists."
)


def error_response(
    status: int,
    code: str,
    stage: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error envelope ``{code, stage, message, request_id}``, counted by code and stage.

    Every refusal leaves through here: the exception handlers and the middleware that refuses
    a body before any route runs.
    """
    metrics.ERRORS.labels(code, stage).inc()
    return JSONResponse(
        {"code": code, "stage": stage, "message": message, "request_id": current_request_id()},
        status_code=status,
        headers=headers,
    )


def response_for(error: ScoringError) -> JSONResponse:
    """The envelope of a ``ScoringError``, with its status and headers."""
    return error_response(error.status_code, error.code, error.stage, error.message, error.headers)


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """One sentence per invalid field (pydantic's error list), naming the field and what it must
    be; locations lose FastAPI's ``body``/``path``/``query``/``header`` prefix."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(
            str(p) for p in err.get("loc", ()) if p not in ("body", "path", "query", "header")
        )
        kind = err.get("type", "")
        msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        if kind == "missing":
            msg = "is required"
        elif kind == "extra_forbidden":
            msg = "is not a field of this request; remove it"
        elif kind == "json_invalid":
            loc, msg = "body", "is not valid JSON"
        elif kind in ("finite_number",):
            msg = "must be a finite number"
        parts.append(f"{loc or 'body'}: {msg}")
    more = len(errors) - len(parts)
    suffix = f" (and {more} more)" if more > 0 else ""
    return "; ".join(parts) + suffix
