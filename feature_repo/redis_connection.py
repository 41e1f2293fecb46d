"""A Redis connection as the platform's settings write it, for every package that opens one.

``redis://...`` URLs, or Feast's own form ``host:port[,password=...][,ssl=true][,db=N]`` (the one
``feature_store*.yaml`` uses), turned into redis-py client options.
"""

from __future__ import annotations


def redis_options(connection: str) -> dict[str, object]:
    """Client options: ``{"url": ...}`` for a URL, else host, port and the named options."""
    if "://" in connection:
        return {"url": connection}
    head, *parts = connection.split(",")
    host, _, port = head.rpartition(":")
    options: dict[str, object] = {"host": host or "127.0.0.1", "port": int(port or 6379)}
    for part in parts:
        key, _, value = part.partition("=")
        key = key.strip()
        if key == "password":
            options["password"] = value
        elif key == "ssl":
            options["ssl"] = value.strip().lower() == "true"
        elif key == "db":
            options["db"] = int(value)
    return options
