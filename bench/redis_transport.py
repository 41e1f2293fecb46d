"""Which Redis client reads a micro-batch fastest, from inside the event loop.

The same packed HMGETs (one per entity and view, as the service sends them) through: the
service's pipelined client (hiredis on the event loop), redis-py's asyncio pipeline, and redis-py's
blocking pipeline in a worker thread. Prints microseconds per read for 1, 16 and 256 requests.

    python -m bench.redis_transport --redis 127.0.0.1:6379    # any server; keys need not exist
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis
import redis.asyncio as aredis
import uvloop

from feature_repo.layout import ViewSpec
from scoring_service.redis.codec import ViewCodec, plan_read
from scoring_service.redis.pipeline import RedisEndpoint, RedisPipelineClient
from scoring_service.stages.features import StoreLayout

VIEWS: dict[str, ViewSpec] = {
    "ip_features": ViewSpec("ip_address", 1_209_600, [f"ip_f{i}" for i in range(7)]),
    "card_features": ViewSpec("card_id", 2_592_000, [f"card_f{i}" for i in range(8)]),
    "merchant_features": ViewSpec("merchant_id", 604_800, [f"merchant_f{i}" for i in range(5)]),
}


async def measure(endpoint: RedisEndpoint, n: int, repeats: int) -> dict[str, float]:
    """Microseconds per read of n requests (3 HMGETs each) for each client."""
    layout = StoreLayout.from_views(VIEWS)
    codecs = [ViewCodec.build(view, "fraud_scoring") for view in layout.views]
    keys: dict[str, list[str | None]] = {
        spec.join_key: [f"{spec.join_key}_{i}" for i in range(n)] for spec in VIEWS.values()
    }
    plan = plan_read(codecs, keys)
    commands = [
        (codec.redis_key(entity), list(codec.fields))
        for codec in codecs
        for entity in keys[codec.view.join_key]
        if entity is not None
    ]
    ours = RedisPipelineClient(endpoint)
    async_client = aredis.Redis(host=endpoint.host, port=endpoint.port, db=endpoint.db)
    sync_client = redis.Redis(host=endpoint.host, port=endpoint.port, db=endpoint.db)

    async def pipelined() -> None:
        await ours.request(plan.payload, plan.count)

    async def redis_asyncio() -> None:
        async with async_client.pipeline(transaction=False) as pipe:
            for key, fields in commands:
                pipe.hmget(key, fields)  # type: ignore[arg-type]
            await pipe.execute()

    def blocking() -> None:
        with sync_client.pipeline(transaction=False) as pipe:
            for key, fields in commands:
                pipe.hmget(key, fields)  # type: ignore[arg-type]
            pipe.execute()

    async def in_thread() -> None:
        await asyncio.to_thread(blocking)

    out = {}
    for name, call in (
        ("service pipelined client (hiredis, event loop)", pipelined),
        ("redis-py asyncio pipeline", redis_asyncio),
        ("redis-py blocking pipeline in a thread", in_thread),
    ):
        for _ in range(5):
            await call()
        started = time.perf_counter()
        for _ in range(repeats):
            await call()
        out[name] = (time.perf_counter() - started) / repeats * 1e6
    ours.close()
    await async_client.aclose()
    sync_client.close()
    return out


def main() -> None:
    """Print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="127.0.0.1:6379", help="host:port of a Redis server")
    args = parser.parse_args()
    endpoint = RedisEndpoint.from_connection_string(args.redis)
    for n in (1, 16, 256):
        results = uvloop.run(measure(endpoint, n, repeats=max(20, 4000 // n)))
        for name, micros in results.items():
            print(f"{n:>4} requests  {micros:>9.0f} us  {name}")


if __name__ == "__main__":
    main()
