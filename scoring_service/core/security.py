"""Who may call the service, and how many bytes it will read from them.

API keys are configured as sha256 hex digests (``SCORING_API_KEY_HASHES`` for the scoring routes,
``SCORING_ANALYST_KEY_HASHES`` for explanations, ``SCORING_ADMIN_KEY_HASHES`` for /admin), so the
service never holds a key it could leak. A
presented key is hashed and compared with every configured digest in constant time
(``hmac.compare_digest``); keys are never logged. A missing or unknown key is 401, a known key
without the route's scope is 403, both in the typed error body.

``RequestLimitsMiddleware`` refuses a body larger than ``max_body_bytes`` before it is parsed:
from its Content-Length at once, or by counting bytes as they arrive (chunked bodies).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scoring_service.core.errors import (
    ConfigurationInvalid,
    Forbidden,
    PayloadTooLarge,
    Unauthorized,
    response_for,
)
from scoring_service.core.settings import Settings

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
MAX_KEY_LENGTH = 256
"""Longer header values are refused without hashing them."""

ARRIVED_AT = "scoring.arrived_at"
"""Scope key holding the request's arrival (time.monotonic()); deadlines count from it."""


class KeyScope(StrEnum):
    """What a key may do."""

    SCORE = "score"
    ANALYST = "analyst"  # explanations: what a logged answer was made of
    ADMIN = "admin"


SCOPE_WORDS = {
    KeyScope.SCORE: ("scoring routes", "a scoring key"),
    KeyScope.ANALYST: ("explanation routes", "an analyst key"),
    KeyScope.ADMIN: ("admin routes", "an admin key"),
}
"""How a refusal names a scope's routes and the key they need."""


def hash_key(key: str) -> str:
    """The sha256 hex digest under which a key is configured."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


class KeyRing:
    """The configured key digests per scope."""

    def __init__(self, digests: dict[KeyScope, tuple[str, ...]]) -> None:
        self._digests = [(scope, d) for scope, values in digests.items() for d in values]
        self.counts = {scope: len(values) for scope, values in digests.items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """Digests from SCORING_API_KEY_HASHES, SCORING_ANALYST_KEY_HASHES and
        SCORING_ADMIN_KEY_HASHES."""
        return cls(
            {
                KeyScope.SCORE: settings.api_key_hashes,
                KeyScope.ANALYST: settings.analyst_key_hashes,
                KeyScope.ADMIN: settings.admin_key_hashes,
            }
        )

    def scopes_of(self, presented: str) -> set[KeyScope]:
        """Scopes granted to a presented key (empty when unknown).

        Every digest is compared, with no early exit, so the time taken does not tell which
        configured key (if any) was close.
        """
        digest = hash_key(presented)
        granted: set[KeyScope] = set()
        for scope, configured in self._digests:
            if hmac.compare_digest(digest, configured):
                granted.add(scope)
        return granted


def require_keys(settings: Settings) -> None:
    """Secure by default: refuse to start without at least one scoring key."""
    if not settings.api_key_hashes:
        raise ConfigurationInvalid(
            "no API key is configured: set SCORING_API_KEY_HASHES to the sha256 hex digest of "
            "each allowed key (`python -m scoring_service hash-key` prints one; `make serve` "
            "creates a local development key in data/)"
        )


api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ApiKey",
    description="An API key; scoring routes need a scoring key, explanations an analyst key, "
    "/admin routes an admin key.",
    auto_error=False,
)


def check_key(keyring: KeyRing, key: str | None, scope: KeyScope) -> None:
    """Let a presented key through only when it holds this scope: Unauthorized (no key, or an
    unknown one) or Forbidden (a known key of another scope) otherwise."""
    if not key:
        raise Unauthorized(
            f"This route needs an API key in the {API_KEY_HEADER} header.",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    granted = keyring.scopes_of(key) if len(key) <= MAX_KEY_LENGTH else set()
    if not granted:
        raise Unauthorized(
            f"The key in the {API_KEY_HEADER} header is not valid; check it with whoever "
            "issued it.",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    if scope not in granted:
        routes, key_kind = SCOPE_WORDS[scope]
        raise Forbidden(f"This key may not call {routes}; use {key_kind}.")


def require_scope(scope: KeyScope) -> Callable[..., Awaitable[None]]:
    """A dependency that lets a request through only with a key of this scope."""

    async def check(
        request: Request, key: Annotated[str | None, Security(api_key_header)] = None
    ) -> None:
        check_key(request.app.state.keyring, key, scope)

    check.__name__ = f"require_{scope.value}_key"
    return check


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a body outgrows the limit; FastAPI re-raises HTTP errors
    untouched, so the app's handler turns it into a typed 413 payload_too_large."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=too_large_message(limit))


def too_large_message(limit: int) -> str:
    """What a caller reads when its body is too large."""
    return (
        f"The request body is larger than {limit} bytes; send fewer objects per call "
        "(see SCORING_MAX_BATCH_SIZE)."
    )


class RequestLimitsMiddleware:
    """Stamps each request's arrival time (deadlines count from it) and bounds its body."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if ARRIVED_AT not in scope:  # the server's protocol stamps it when it can, earlier
            scope[ARRIVED_AT] = time.monotonic()
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # Refused from the header alone: not one byte of the body is read.
            await _refuse(scope, send, limit)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            # Only reaches here when read outside the routes' handlers (e.g. a middleware).
            if started:
                raise
            await _refuse(scope, send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(scope: Scope, send: Send, limit: int) -> None:
    error = PayloadTooLarge(too_large_message(limit), headers={"Connection": "close"})
    await response_for(error)(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
