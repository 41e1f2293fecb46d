"""Fast online reads of Feast's own Redis layout: one pipelined HMGET per entity and view.

Feast writes one Redis hash per entity key (``serialize_entity_key`` v3 + project). Inside it,
each feature is a field named by the murmur3 hash of ``"view:feature"`` holding a serialized
``ValueProto``, and ``"_ts:view"`` holds the view's event time as a serialized protobuf
``Timestamp`` (``feast/infra/online_stores/redis.py``). This module reads exactly that layout,
so it returns what ``FeatureStore.get_online_features`` returns
(``tests/scoring_service/test_redis_reader.py`` proves it), without the SDK's per-call work:

- the RESP commands are packed from bytes precomputed per view (key prefix, HMGET fields);
- one pipeline carries every (entity, view) of a batch; keys repeated in it are read once;
- replies are parsed by hiredis on the event loop (no thread hop), values decoded by a small
  protobuf decoder for the numeric wire forms Feast writes, with ``ValueProto`` as fallback.

Nothing read is cached: every call reads the store.

The asyncio client keeps at most ``pool_size`` connections. Each one pipelines: batches are
written back to back and replies matched to them in order, so a connection never waits for
the previous batch's answer before sending the next. A connection that goes silent for
``timeout_s`` while replies are due is dropped and its waiters fail; the next call reconnects.
Every Redis or socket failure leaves as ``FeatureStoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl as ssl_module
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.protos.feast.types.Value_pb2 import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from redis.backoff import NoBackoff
from redis.retry import Retry

from feature_repo.online import FeatureBatch, Row, StoreLayout, ViewLayout, assemble
from scoring_service.errors import FeatureStoreUnavailable
from scoring_service.settings import Settings

logger = logging.getLogger(__name__)

UNAVAILABLE = "The online feature store cannot be read right now; retry shortly."
NAN = math.nan

# --- decoding Feast's values ----------------------------------------------------------------

# ValueProto wire tags (field number << 3 | wire type) of the numeric kinds Feast writes.
_INT32, _INT64, _DOUBLE, _FLOAT, _BOOL, _UNIX_TS = 0x18, 0x20, 0x29, 0x35, 0x38, 0x40
_VARINT_TAGS = frozenset((_INT32, _INT64, _BOOL, _UNIX_TS))
_unpack_double = struct.Struct("<d").unpack_from
_unpack_float = struct.Struct("<f").unpack_from

# Counts are mostly small: a one-byte varint is a dictionary hit. b"" is a null value.
_SMALL: dict[bytes, float] = {bytes((tag, i)): float(i) for tag in _VARINT_TAGS for i in range(128)}
_SMALL[b""] = NAN


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    """(unsigned value, next position) of the base-128 varint at ``pos``."""
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _slow_value(raw: bytes) -> float:
    """Any other ValueProto, parsed by protobuf; a non-numeric feature is a contract error."""
    proto = ValueProto.FromString(raw)
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return NAN
    value = getattr(proto, kind)
    if isinstance(value, bool | int | float):
        return float(value)
    raise ValueError(f"online feature of kind {kind} is not numeric; the model cannot use it")


def decode_value(raw: bytes | None) -> float:
    """A serialized ValueProto as the float the model reads (NaN for null or absent)."""
    if raw is None:
        return NAN
    small = _SMALL.get(raw)
    if small is not None:
        return small
    tag = raw[0]
    if tag == _DOUBLE and len(raw) == 9:
        return _unpack_double(raw, 1)[0]
    if tag in _VARINT_TAGS:
        value, end = _varint(raw, 1)
        if end == len(raw):
            # int32/int64 negatives are 10-byte two's complement varints.
            return float(value - (1 << 64) if value >= 1 << 63 else value)
    elif tag == _FLOAT and len(raw) == 5:
        return _unpack_float(raw, 1)[0]
    return _slow_value(raw)


def decode_timestamp(raw: bytes | None) -> float:
    """A serialized protobuf Timestamp as epoch seconds; NaN when absent.

    Feast reports a zero timestamp for an entity it has no row for, so zero reads as absent too.
    """
    if not raw:
        return NAN
    seconds = nanos = 0
    pos, end = 0, len(raw)
    try:
        while pos < end:
            tag = raw[pos]
            value, pos = _varint(raw, pos + 1)
            if tag == 0x08:
                seconds = value - (1 << 64) if value >= 1 << 63 else value
            elif tag == 0x10:
                nanos = value
            else:
                raise ValueError(tag)
    except (IndexError, ValueError):
        stamp = Timestamp.FromString(raw)
        seconds, nanos = stamp.seconds, stamp.nanos
    if seconds == 0 and nanos == 0:
        return NAN
    return seconds + nanos / 1e9


# --- packing reads --------------------------------------------------------------------------


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


@dataclass(frozen=True)
class ViewCodec:
    """What one feature view's reads need, computed once at start-up."""

    view: ViewLayout
    fields: tuple[bytes, ...]  # hash fields: mmh3("view:feature")..., b"_ts:view"
    key_prefix: bytes  # serialized entity key up to the value's length
    head: bytes  # RESP array header + HMGET
    tail: bytes  # the fields as RESP bulk strings
    project: bytes

    @classmethod
    def build(cls, view: ViewLayout, project: str) -> ViewCodec:
        """Feast's field names and key layout for one view (entity key serialization v3)."""
        fields = (
            *(_mmh3(f"{view.name}:{feature}") for feature in view.features),
            f"_ts:{view.name}".encode(),
        )
        # serialize_entity_key v3 for one string join key: the key part, then the value's
        # type and length, then the value; the project name follows (helpers._redis_key).
        prefix = serialize_entity_key_prefix([view.join_key], 3) + struct.pack(
            "<I", ValueType.STRING
        )
        return cls(
            view=view,
            fields=fields,
            key_prefix=prefix,
            head=b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fields)),
            tail=b"".join(_bulk(f) for f in fields),
            project=project.encode(),
        )

    def redis_key(self, entity_id: str) -> bytes:
        """The hash key Feast writes this entity under."""
        value = entity_id.encode()
        return b"%s%s%s%s" % (self.key_prefix, struct.pack("<I", len(value)), value, self.project)

    def command(self, entity_id: str) -> bytes:
        """One packed ``HMGET key field...``."""
        key = self.redis_key(entity_id)
        return b"%s$%d\r\n%s\r\n%s" % (self.head, len(key), key, self.tail)


@dataclass
class ReadPlan:
    """The commands of one read and where each request's row comes back."""

    n: int
    payload: bytes
    count: int  # replies expected
    slots: list[tuple[ViewCodec, list[int], int]]  # (view, [n] reply index or -1, replies)


def plan_read(codecs: Sequence[ViewCodec], keys: dict[str, list[str | None]]) -> ReadPlan:
    """Pack one HMGET per distinct (view, entity) of the requests, views in layout order."""
    n = len(next(iter(keys.values()))) if keys else 0
    parts: list[bytes] = []
    slots: list[tuple[ViewCodec, list[int], int]] = []
    for codec in codecs:
        seen: dict[str, int] = {}
        index = [-1] * n
        for i, entity_id in enumerate(keys[codec.view.join_key]):
            if entity_id is None:
                continue
            slot = seen.get(entity_id)
            if slot is None:
                slot = seen[entity_id] = len(seen)
                parts.append(codec.command(entity_id))
            index[i] = slot
        slots.append((codec, index, len(seen)))
    return ReadPlan(n=n, payload=b"".join(parts), count=len(parts), slots=slots)


def assemble_replies(
    layout: StoreLayout, plan: ReadPlan, replies: Sequence[Any], now: float
) -> FeatureBatch:
    """Decode the replies of a read and assemble them (``feature_repo.online.assemble``)."""
    small = _SMALL
    reads: dict[str, tuple[list[int], list[Row]]] = {}
    start = 0
    for codec, index, m in plan.slots:
        width = len(codec.view.features)
        decoded: list[Row] = []
        stamps: dict[bytes | None, float] = {}  # hourly snapshots share their event times
        for reply in replies[start : start + m]:
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
                decoded.append(
                    (stamp, [small.get(raw) or decode_value(raw) for raw in reply[:width]])
                )
        start += m
        reads[codec.view.name] = (index, decoded)
    return assemble(layout, plan.n, reads, now)


# --- the asyncio pipeline client --------------------------------------------------------------


@dataclass
class _Waiter:
    count: int
    replies: list[Any]
    future: asyncio.Future[list[Any]]


class _Pipeline(asyncio.Protocol):
    """One Redis connection: requests written back to back, replies matched in order."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reader = hiredis.Reader()
        self._waiting: deque[_Waiter] = deque()
        self._loop = asyncio.get_running_loop()
        self._last_reply = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_due = 0.0

    @property
    def busy(self) -> int:
        """Requests written whose replies have not all arrived."""
        return len(self._waiting)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        self._last_reply = self._loop.time()
        waiting = self._waiting
        gets = self._reader.gets
        while waiting:
            waiter = waiting[0]
            replies = waiter.replies
            while len(replies) < waiter.count:
                reply = gets()
                if reply is False:
                    return
                replies.append(reply)
            waiting.popleft()
            if not waiter.future.done():  # its caller may have given up (deadline)
                waiter.future.set_result(replies)
        if self._reader.gets() is not False:
            self._fail(ConnectionError("reply with no request waiting for it"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        error = exc or ConnectionError("the online store closed the connection")
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def request(self, payload: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Write packed commands; the future gets their ``count`` replies."""
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if self.closed or self.transport is None:
            future.set_exception(ConnectionError("connection to the online store is closed"))
            return future
        if not self._waiting:
            self._last_reply = self._loop.time()  # the silence clock starts now
        self._waiting.append(_Waiter(count, [], future))
        self.transport.write(payload)
        if self._watchdog is None:
            self._arm(self.timeout_s)
        return future

    def _arm(self, delay: float) -> None:
        self._watchdog_due = self._loop.time() + delay
        self._watchdog = self._loop.call_later(delay, self._check_silence)

    def _check_silence(self) -> None:
        self._watchdog = None
        if not self._waiting or self.closed:
            return
        now = self._loop.time()
        if now - self._watchdog_due > self.timeout_s / 4:
            # This check runs late: the event loop itself was busy, and replies may be waiting
            # unread in the socket. That is not the store's silence; look again later.
            self._arm(self.timeout_s)
            return
        silent = now - self._last_reply
        if silent >= self.timeout_s:
            self._fail(TimeoutError(f"no reply from the online store in {self.timeout_s:.3f} s"))
        else:
            self._arm(self.timeout_s - silent)

    def _fail(self, error: Exception) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost(error)

    def close(self) -> None:
        """Close the socket; pending waiters fail."""
        if self.transport is not None and not self.closed and not self._loop.is_closed():
            self.transport.close()


def _pack(*args: bytes | str | int) -> bytes:
    return hiredis.pack_command(args)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RedisEndpoint:
    """Where and how to connect, parsed from Feast's connection string."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    @classmethod
    def from_connection_string(cls, connection_string: str) -> RedisEndpoint:
        """Parse like Feast does (``host:port,key=value,...``); redis-py tuning keys are ignored,
        the service's own timeouts and pool bound apply."""
        nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
        node = nodes[0]
        return cls(
            host=str(node["host"]),
            port=int(node.get("port", 6379)),
            db=int(params.get("db", 0) or 0),
            username=None if params.get("username") is None else str(params["username"]),
            password=None if params.get("password") is None else str(params["password"]),
            ssl=bool(params.get("ssl", False)),
        )


def fast_read_refusal(store: FeatureStore) -> str | None:
    """Why the fast reader cannot serve this store, or None when it can."""
    config = store.config
    online = config.online_store
    if getattr(online, "type", None) != "redis":
        return f"online store type is {getattr(online, 'type', None)!r}, not redis"
    redis_type = str(getattr(online.redis_type, "value", online.redis_type))
    if redis_type != "redis":
        return f"redis_type is {redis_type} (the fast reader speaks to one Redis server)"
    if config.entity_key_serialization_version != 3:
        return "entity_key_serialization_version is not 3"
    if getattr(config.registry, "enable_online_feature_view_versioning", False):
        return "online feature view versioning is enabled"
    return None


class RedisPipelineClient:
    """Pipelined Redis connections: the event loop's for serving, a blocking pool beside it.

    At most ``pool_size`` connections of each kind. A request goes to an idle connection, to a
    new one while under the bound, else behind the least busy one (replies come in order).
    """

    def __init__(
        self,
        endpoint: RedisEndpoint,
        *,
        timeout_s: float = 0.05,
        connect_timeout_s: float = 0.1,
        pool_size: int = 16,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.pool_size = pool_size
        self._connections: list[_Pipeline] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening = 0
        self._handshake = self._handshake_commands()
        self._sync = redis.Redis(
            host=endpoint.host,
            port=endpoint.port,
            db=endpoint.db,
            username=endpoint.username,
            password=endpoint.password,
            ssl=endpoint.ssl,
            socket_timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
            max_connections=pool_size,
            retry=Retry(NoBackoff(), 0),  # fail fast: callers have deadlines; next call reconnects
        )

    @classmethod
    def for_store(
        cls,
        store: FeatureStore,
        *,
        timeout_s: float = 0.05,
        connect_timeout_s: float = 0.1,
        pool_size: int = 16,
    ) -> RedisPipelineClient:
        """A client of a Feast store's Redis server; ValueError when the fast path cannot
        serve that store (see ``fast_read_refusal``)."""
        refusal = fast_read_refusal(store)
        if refusal is not None:
            raise ValueError(refusal)
        return cls(
            RedisEndpoint.from_connection_string(store.config.online_store.connection_string),
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            pool_size=pool_size,
        )

    async def request(self, payload: bytes, count: int) -> list[Any]:
        """Send packed commands on the event loop; their ``count`` replies, in order.

        Error replies come back as exception objects in the list; transport failures raise
        FeatureStoreUnavailable.
        """
        try:
            connection = await self._connection()
            return await connection.request(payload, count)
        except (OSError, TimeoutError, hiredis.HiredisError) as exc:
            raise FeatureStoreUnavailable(UNAVAILABLE) from exc

    def request_sync(self, payload: bytes, count: int) -> list[Any]:
        """The same with the blocking client; error replies raise FeatureStoreUnavailable."""
        pool = self._sync.connection_pool
        try:
            connection = pool.get_connection()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise FeatureStoreUnavailable(UNAVAILABLE) from exc
        try:
            connection.send_packed_command([payload], check_health=False)
            return [connection.read_response() for _ in range(count)]
        except (redis.exceptions.RedisError, OSError) as exc:
            connection.disconnect()  # replies may be left unread on it
            raise FeatureStoreUnavailable(UNAVAILABLE) from exc
        finally:
            pool.release(connection)

    def ping(self) -> None:
        """Raise FeatureStoreUnavailable when the server cannot be reached (blocking)."""
        try:
            self._sync.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise FeatureStoreUnavailable(UNAVAILABLE) from exc

    async def ping_async(self) -> None:
        """The same check on the event loop."""
        (reply,) = await self.request(_pack("PING"), 1)
        if isinstance(reply, Exception):
            raise FeatureStoreUnavailable(UNAVAILABLE) from reply

    def close(self) -> None:
        """Close every connection."""
        for connection in self._connections:
            connection.close()
        self._connections.clear()
        self._sync.close()

    def _handshake_commands(self) -> list[bytes]:
        commands = []
        if self.endpoint.password is not None:
            if self.endpoint.username is not None:
                commands.append(_pack("AUTH", self.endpoint.username, self.endpoint.password))
            else:
                commands.append(_pack("AUTH", self.endpoint.password))
        if self.endpoint.db:
            commands.append(_pack("SELECT", self.endpoint.db))
        return commands

    async def _connection(self) -> _Pipeline:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections belong to the loop that opened them (tests run several loops).
            self._connections, self._loop = [], loop
        live = [c for c in self._connections if not c.closed]
        self._connections = live
        least: _Pipeline | None = None
        for connection in live:
            if connection.busy == 0:
                return connection
            if least is None or connection.busy < least.busy:
                least = connection
        if least is not None and len(live) + self._opening >= self.pool_size:
            return least
        self._opening += 1
        try:
            connection = await self._open(loop)
        finally:
            self._opening -= 1
        self._connections.append(connection)
        return connection

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Pipeline:
        context = ssl_module.create_default_context() if self.endpoint.ssl else None
        async with asyncio.timeout(self.connect_timeout_s):
            _, connection = await loop.create_connection(
                lambda: _Pipeline(self.timeout_s),
                self.endpoint.host,
                self.endpoint.port,
                ssl=context,
            )
            if self._handshake:
                replies = await connection.request(b"".join(self._handshake), len(self._handshake))
                for reply in replies:
                    if isinstance(reply, Exception):
                        connection.close()
                        raise ConnectionError(f"online store refused the handshake: {reply}")
        return connection


# Above this many requests, decoding moves off the event loop so other requests keep flowing.
OFF_LOOP_ROWS = 256


class RedisFeatureReader:
    """Online features of one model's layout from Feast's Redis layout, without the SDK.

    ``read_async`` is the service's path (event loop, pipelined, hiredis); ``read`` sends the
    same commands with redis-py's blocking client, for callers outside the event loop.
    """

    def __init__(
        self, layout: StoreLayout, client: RedisPipelineClient, project: str, *, owns_client=False
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
        *,
        timeout_s: float = 0.05,
        connect_timeout_s: float = 0.1,
        pool_size: int = 16,
    ) -> RedisFeatureReader:
        """A reader with its own client; ValueError when the store is not one it can read."""
        client = RedisPipelineClient.for_store(
            store, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, pool_size=pool_size
        )
        return cls(layout, client, store.config.project, owns_client=True)

    def plan(self, keys: dict[str, list[str | None]]) -> ReadPlan:
        """The pipelined commands for these requests."""
        return plan_read(self.codecs, keys)

    async def read_async(self, keys: dict[str, list[str | None]]) -> FeatureBatch:
        """Features for n requests, read on the event loop in one pipeline."""
        plan = self.plan(keys)
        replies = await self.client.request(plan.payload, plan.count) if plan.count else []
        if plan.n > OFF_LOOP_ROWS:
            return await asyncio.to_thread(
                assemble_replies, self.layout, plan, replies, time.time()
            )
        return assemble_replies(self.layout, plan, replies, time.time())

    def read(self, keys: dict[str, list[str | None]]) -> FeatureBatch:
        """Features for n requests with the blocking client (same commands, same decoding)."""
        plan = self.plan(keys)
        replies = self.client.request_sync(plan.payload, plan.count) if plan.count else []
        return assemble_replies(self.layout, plan, replies, time.time())

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


def open_fast_redis(store: FeatureStore, settings: Settings) -> RedisPipelineClient | None:
    """The fast reader's client for this store, or None when reads go through Feast's SDK."""
    if settings.redis_reader != "fast":
        logger.info("online reads: Feast SDK (SCORING_REDIS_READER=%s)", settings.redis_reader)
        return None
    refusal = fast_read_refusal(store)
    if refusal is not None:
        logger.info("online reads: Feast SDK (%s)", refusal)
        return None
    logger.info("online reads: pipelined Redis reader of Feast's layout")
    return RedisPipelineClient.for_store(
        store,
        timeout_s=settings.store_timeout_ms / 1000,
        connect_timeout_s=settings.store_connect_timeout_ms / 1000,
        pool_size=settings.store_pool_size,
    )
