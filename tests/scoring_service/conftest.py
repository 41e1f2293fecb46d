"""Fixtures of the service's tests: the app on SQLite and on Redis with its lifespan running,
the recent transactions it scores and the packages deployments are made of
(tests/fixtures/service.py, shared with tests/scenarios/).

The test keys, headers and helpers stay importable from here for the test packages that take
them from this module.
"""

from tests.fixtures.service import (
    ADMIN_HEADERS,
    ADMIN_KEY,
    ANALYST_HEADERS,
    ANALYST_KEY,
    API_HEADERS,
    API_KEY,
    FRAUD_API,
    as_request,
    client,
    deployment_packages,
    recent,
    settings_for,
    store_kind,
    valid_body,
)

__all__ = [
    "ADMIN_HEADERS",
    "ADMIN_KEY",
    "ANALYST_HEADERS",
    "ANALYST_KEY",
    "API_HEADERS",
    "API_KEY",
    "FRAUD_API",
    "as_request",
    "client",
    "deployment_packages",
    "recent",
    "settings_for",
    "store_kind",
    "valid_body",
]
