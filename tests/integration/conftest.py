"""Servers the integration tests start (PostgreSQL for the shared Feast registry, nginx in front
of replicas), and the recent transactions the service tests score."""

from tests.fixtures.nginx import nginx_for
from tests.fixtures.postgres import postgres_server
from tests.fixtures.service import recent

__all__ = ["nginx_for", "postgres_server", "recent"]
