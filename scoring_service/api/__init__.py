"""The HTTP API: the app factory, dependencies, request and answer models per domain, the
ASGI endpoints that serve scoring calls and the routes that document them."""
