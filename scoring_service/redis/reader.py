"""Online features from Feast's Redis layout without the SDK: one pipelined HMGET per entity
and view, from one Redis server or a Redis Cluster.

The reader returns what ``FeatureStore.get_online_features`` returns
(``tests/scoring_service/redis/test_reader.py`` proves it), without the SDK's per-call work:

- the RESP commands are packed from bytes precomputed per view (``codec``);
- one pipeline carries every (entity, view) of a batch; keys repeated in it are read once
  (on a cluster, one pipeline per master, concurrently: ``cluster``);
- replies are decoded by ``codec``'s small protobuf decoder and assembled into vectors and
  statuses by ``feature_repo.online.assemble``, the status rule every reader shares; a large
  read is decoded in bulk (``codec.decode_values``) and assembled with array operations
  (``assemble_columns``), to the same values.

Nothing read is cached: every call reads the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
from feast import FeatureStore

from feature_repo import clock
from feature_repo.online import (
    ColumnRead,
    FeatureBatch,
    Row,
    StoreLayout,
    assemble,
    assemble_columns,
)
from scoring_service.core.errors import FeatureStoreUnavailable
from scoring_service.core.settings import Settings, StoreConnection
from scoring_service.redis.cluster import RedisClusterClient
from scoring_service.redis.codec import (
    NAN,
    SMALL_VALUES,
    ReadPlan,
    ViewCodec,
    decode_timestamp,
    decode_value,
    decode_values,
    plan_read,
)
from scoring_service.redis.pipeline import UNAVAILABLE, RedisEndpoint, RedisPipelineClient

logger = logging.getLogger(__name__)

FastRedisClient = RedisPipelineClient | RedisClusterClient
"""A client the reader sends its commands through: one server, or a cluster."""


BULK_DECODE_ROWS = 64
"""From this many requests on, replies are decoded in bulk (``codec.decode_values``) and
assembled with array operations (``feature_repo.online.assemble_columns``); below, numpy's
per-call cost would outweigh the rows."""


def assemble_replies(
    layout: StoreLayout, plan: ReadPlan, replies: Sequence[Any], now: float
) -> FeatureBatch:
    """Decode the replies of a read and assemble them (``feature_repo.online.assemble``)."""
    if plan.n < BULK_DECODE_ROWS:
        reads: dict[str, tuple[list[int], list[Row]]] = {}
        start = 0
        for codec, index, m in plan.blocks:
            reads[codec.view.name] = (index, _decode_rows(codec, replies[start : start + m]))
            start += m
        return assemble(layout, plan.n, reads, now)
    columns: dict[str, ColumnRead] = {}
    start = 0
    for codec, index, m in plan.blocks:
        block = replies[start : start + m]
        try:
            stamps, values = _decode_columns(codec, block)
        except Exception:
            # An error reply or a value the decoder refuses: row by row, it raises what it
            # raises, at the same row.
            stamps, values = _rows_as_columns(codec, _decode_rows(codec, block))
        columns[codec.view.name] = (index, stamps, values)
        start += m
    return assemble_columns(layout, plan.n, columns, now)


def _decode_rows(codec: ViewCodec, replies: Sequence[Any]) -> list[Row]:
    """One view's replies, row by row: (event time or NaN, values), an error reply raising."""
    small = SMALL_VALUES
    width = len(codec.view.features)
    decoded: list[Row] = []
    stamps: dict[bytes | None, float] = {}  # hourly snapshots share their event times
    for reply in replies:
        if isinstance(reply, Exception):
            raise FeatureStoreUnavailable(UNAVAILABLE) from reply
        raw_stamp = reply[width]
        stamp = stamps.get(raw_stamp)
        if stamp is None:
            stamp = stamps[raw_stamp] = decode_timestamp(raw_stamp)
        if stamp != stamp:  # NaN: no row for this entity
            decoded.append((NAN, ()))
        else:
            # Most values are small counts: a dictionary hit before the decoder's call.
            decoded.append((stamp, [small.get(raw) or decode_value(raw) for raw in reply[:width]]))
    return decoded


def _rows_as_columns(codec: ViewCodec, rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray]:
    """Decoded rows as the arrays ``_decode_columns`` gives."""
    values = np.full((len(rows), len(codec.view.features)), NAN)
    for i, (stamp, row) in enumerate(rows):
        if stamp == stamp:
            values[i] = row
    return np.array([stamp for stamp, _ in rows], dtype=np.float64), values


class _ErrorReply(Exception):
    """A reply of the block is an error: the row by row path answers it."""


def _decode_columns(codec: ViewCodec, replies: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """One view's replies as arrays: event times [m] (NaN: no row) and values [m, width] (the
    values of a row without an event time are not read, as row by row)."""
    width = len(codec.view.features)
    m = len(replies)
    if any(issubclass(kind, BaseException) for kind in set(map(type, replies))):
        raise _ErrorReply
    raw_stamps = list(map(itemgetter(width), replies))
    # Hourly snapshots share their event times: each distinct one is decoded once.
    known = {raw: decode_timestamp(raw) for raw in set(raw_stamps)}
    stamps = np.fromiter(map(known.__getitem__, raw_stamps), dtype=np.float64, count=m)
    values = np.full((m, width), NAN)
    found = np.flatnonzero(~np.isnan(stamps))
    if len(found) and width:
        rows = replies if len(found) == m else [replies[i] for i in found.tolist()]
        flat = list(chain.from_iterable(rows))
        del flat[width :: width + 1]  # the event times
        values[found] = decode_values(flat).reshape(len(found), width)
    return stamps, values


def fast_read_refusal(store: FeatureStore) -> str | None:
    """Why the fast reader cannot serve this store, or None when it can."""
    config = store.config
    online = config.online_store
    if getattr(online, "type", None) != "redis":
        return f"online store type is {getattr(online, 'type', None)!r}, not redis"
    redis_type = str(getattr(online.redis_type, "value", online.redis_type))
    if redis_type not in ("redis", "redis_cluster"):
        return f"redis_type is {redis_type} (the fast reader reads a server or a cluster)"
    if config.entity_key_serialization_version != 3:
        return "entity_key_serialization_version is not 3"
    if getattr(config.registry, "enable_online_feature_view_versioning", False):
        return "online feature view versioning is enabled"
    return None


def client_for_store(
    store: FeatureStore, connection: StoreConnection | None = None
) -> FastRedisClient:
    """A client of a Feast store's Redis server or cluster; ValueError when the fast path
    cannot serve that store (see ``fast_read_refusal``)."""
    refusal = fast_read_refusal(store)
    if refusal is not None:
        raise ValueError(refusal)
    online = store.config.online_store
    endpoints = RedisEndpoint.all_from_connection_string(online.connection_string)
    if str(getattr(online.redis_type, "value", online.redis_type)) == "redis_cluster":
        return RedisClusterClient(endpoints, connection)
    return RedisPipelineClient(endpoints[0], connection)


class RedisFeatureReader:
    """Online features of one model's layout from Feast's Redis layout, without the SDK.

    ``read_async`` is the service's path (event loop, pipelined, hiredis); ``read`` sends the
    same commands with redis-py's blocking client, for callers outside the event loop.
    """

    def __init__(
        self, layout: StoreLayout, client: FastRedisClient, project: str, *, owns_client=False
    ) -> None:
        self.layout = layout
        self.client = client
        self.codecs = [ViewCodec.build(view, project) for view in layout.views]
        self._owns_client = owns_client

    @classmethod
    def from_store(
        cls,
        store: FeatureStore,
        layout: StoreLayout,
        connection: StoreConnection | None = None,
    ) -> RedisFeatureReader:
        """A reader with its own client; ValueError when the store is not one it can read."""
        client = client_for_store(store, connection)
        return cls(layout, client, store.config.project, owns_client=True)

    def plan(self, keys: dict[str, list[str | None]]) -> ReadPlan:
        """The pipelined commands for these requests."""
        return plan_read(self.codecs, keys)

    async def read_async(
        self, keys: dict[str, list[str | None]], *, decode_off_loop: bool = False
    ) -> FeatureBatch:
        """Features for n requests, read on the event loop in one pipeline; packed and decoded
        in a worker thread when the caller asks (a large read would hold the loop)."""
        # A large read's packing (tens of thousands of keys) leaves the loop too.
        plan = await asyncio.to_thread(self.plan, keys) if decode_off_loop else self.plan(keys)
        replies = await self.client.execute(plan.commands, plan.keys) if plan.count else []
        if decode_off_loop:
            return await asyncio.to_thread(
                assemble_replies, self.layout, plan, replies, clock.time()
            )
        return assemble_replies(self.layout, plan, replies, clock.time())

    def read(self, keys: dict[str, list[str | None]]) -> FeatureBatch:
        """Features for n requests with the blocking client (same commands, same decoding)."""
        plan = self.plan(keys)
        replies = self.client.execute_sync(plan.commands, plan.keys) if plan.count else []
        return assemble_replies(self.layout, plan, replies, clock.time())

    def ping(self) -> None:
        """Raise FeatureStoreUnavailable when the store cannot be read (blocking)."""
        self.client.ping()

    async def ping_async(self) -> None:
        """The same check on the event loop."""
        await self.client.ping_async()

    def close(self) -> None:
        """Close the client if this reader opened it (a shared one is closed by its owner)."""
        if self._owns_client:
            self.client.close()


def open_fast_redis(store: FeatureStore, settings: Settings) -> FastRedisClient | None:
    """The fast reader's client for this store, or None when reads go through Feast's SDK."""
    if settings.redis_reader != "fast":
        logger.info("online reads: Feast SDK (SCORING_REDIS_READER=%s)", settings.redis_reader)
        return None
    refusal = fast_read_refusal(store)
    if refusal is not None:
        logger.info("online reads: Feast SDK (%s)", refusal)
        return None
    logger.info(
        "online reads: pipelined Redis reader of Feast's layout (%s)",
        store.config.online_store.redis_type,
    )
    return client_for_store(store, settings.store_connection)
