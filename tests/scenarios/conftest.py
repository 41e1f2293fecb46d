"""Fixtures of the scenario tests: the service's own (tests/fixtures/service.py), the app on
SQLite and on Redis with its lifespan running and the recent transactions it scores."""

from tests.fixtures.service import client, recent, store_kind, valid_body

__all__ = ["client", "recent", "store_kind", "valid_body"]
