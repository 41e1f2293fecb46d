"""The pipelined client against real servers: handshake, failures, a silent store."""

from __future__ import annotations

import socket
import threading
import time

import hiredis
import pytest
import redis

from scoring_service.core.errors import FeatureStoreUnavailable
from scoring_service.core.settings import StoreConnection
from scoring_service.redis.pipeline import RedisEndpoint, RedisPipelineClient, pack
from tests.conftest import free_port
from tests.scoring_service.redis.parity import on_loop

pytestmark = pytest.mark.redis

GET = pack("HMGET", "x", "f")


def test_connection_string_like_feast() -> None:
    endpoint = RedisEndpoint.from_connection_string(
        "redis.internal:6380,db=2,password=s3cret,ssl=true,socket_timeout=0.05"
    )
    assert endpoint == RedisEndpoint(
        host="redis.internal", port=6380, db=2, password="s3cret", ssl=True
    )


def test_defaults_are_the_settings() -> None:
    client = RedisPipelineClient(RedisEndpoint("127.0.0.1", free_port()))
    defaults = StoreConnection.defaults()
    assert (client.timeout_s, client.connect_timeout_s, client.pool_size) == (
        defaults.timeout_s,
        defaults.connect_timeout_s,
        defaults.pool_size,
    )
    client.close()


def test_handshake_selects_the_database(redis_server) -> None:
    """db= in the connection string: the event-loop client selects it like redis-py does."""
    plain = redis.Redis(port=redis_server.port, db=3)
    plain.hset(b"parity_db_key", b"f", b"v")
    endpoint = RedisEndpoint.from_connection_string(f"{redis_server.connection_string},db=3")
    client = RedisPipelineClient(endpoint)
    try:
        payload = b"*3\r\n$4\r\nHGET\r\n$13\r\nparity_db_key\r\n$1\r\nf\r\n"
        assert on_loop(client, lambda: client.request(payload, 1)) == [b"v"]
        assert client.request_sync(payload, 1) == [b"v"]
    finally:
        plain.delete(b"parity_db_key")
        plain.close()
        client.close()


def test_unreachable_store() -> None:
    endpoint = RedisEndpoint(host="127.0.0.1", port=free_port())  # nothing listens
    client = RedisPipelineClient(endpoint, StoreConnection(0.2, 0.2, 16))
    with pytest.raises(FeatureStoreUnavailable):
        on_loop(client, lambda: client.request(GET, 1))
    with pytest.raises(FeatureStoreUnavailable):
        client.request_sync(GET, 1)
    with pytest.raises(FeatureStoreUnavailable):
        client.ping()
    with pytest.raises(FeatureStoreUnavailable):
        on_loop(client, client.ping_async)
    client.close()


def test_silent_store_times_out() -> None:
    """A server that accepts and never answers: the read fails after the socket timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    endpoint = RedisEndpoint(host="127.0.0.1", port=server.getsockname()[1])
    client = RedisPipelineClient(endpoint, StoreConnection(0.2, 0.5, 16))
    try:
        started = time.monotonic()
        with pytest.raises(FeatureStoreUnavailable):
            on_loop(client, lambda: client.request(GET, 1))
        assert 0.15 < time.monotonic() - started < 2.0
        with pytest.raises(FeatureStoreUnavailable):
            client.request_sync(GET, 1)
    finally:
        stop.set()
        thread.join(timeout=2)
        for sock in accepted:
            sock.close()
        server.close()
        client.close()


def test_error_replies_come_back_in_place(redis_server) -> None:
    """An error reply is an exception object at its place, on both paths; the connection stays
    in step (the cluster client reads MOVED and ASK this way)."""
    plain = redis.Redis(port=redis_server.port)
    plain.set(b"pipeline_wrong_type", b"x")
    client = RedisPipelineClient(
        RedisEndpoint.from_connection_string(redis_server.connection_string)
    )
    payload = pack("HGET", "pipeline_wrong_type", "f") + pack("PING")
    try:
        error, pong = client.request_sync(payload, 2)
        assert isinstance(error, redis.exceptions.ResponseError) and pong == b"PONG"
        assert client.request_sync(pack("PING"), 1) == [b"PONG"]
        error, pong = on_loop(client, lambda: client.request(payload, 2))
        assert isinstance(error, hiredis.ReplyError) and pong == b"PONG"
    finally:
        plain.delete(b"pipeline_wrong_type")
        plain.close()
        client.close()
