"""Decisions keyed by business id: the second write of an id writes nothing (real redis-server)."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from scoring_service.stream_scoring.decisions import Decision, DecisionWriter
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis


def _run(server: RedisServer, stream: str, batches: list[list[Decision]]) -> list[list[bool]]:
    async def go() -> list[list[bool]]:
        async with aioredis.Redis(port=server.port) as client:
            writer = DecisionWriter(client, stream, ttl_seconds=60)
            return [await writer.write(batch) for batch in batches]

    return asyncio.run(go())


def test_an_id_is_decided_once_even_within_one_batch(redis_server: RedisServer) -> None:
    stream = "test:decisions:once"
    first = [Decision("tx1", "1-0", b"a"), Decision("tx2", "1-1", b"b")]
    again = [
        Decision("tx2", "2-0", b"c"),
        Decision("tx3", "2-1", b"d"),
        Decision("tx3", "2-2", b"e"),
    ]
    assert _run(redis_server, stream, [first, again]) == [[True, True], [False, True, False]]
    with redis.Redis(port=redis_server.port) as client:
        entries = [(f[b"id"], f[b"event_id"], f[b"answer"]) for _, f in client.xrange(stream)]
    assert entries == [(b"tx1", b"1-0", b"a"), (b"tx2", b"1-1", b"b"), (b"tx3", b"2-1", b"d")]


def test_dedup_keys_share_the_output_streams_slot(redis_server: RedisServer) -> None:
    async def keys() -> tuple[str, list[bool]]:
        async with aioredis.Redis(port=redis_server.port) as client:
            writer = DecisionWriter(client, "test:decisions:slot", ttl_seconds=60)
            await writer.write([Decision("tx9", "1-0", b"a")])
            return writer.key("tx9"), await writer.decided(["tx9", "tx10"])

    key, decided = asyncio.run(keys())
    assert key.startswith("{test:decisions:slot}")  # the hash tag is the stream's name
    assert decided == [True, False]
    with redis.Redis(port=redis_server.port) as client:
        assert 0 < client.ttl(key) <= 60


def test_a_lifetime_under_a_second_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one second"):
        DecisionWriter(aioredis.Redis(), "s", ttl_seconds=0)
