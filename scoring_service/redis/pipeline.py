"""Pipelined RESP connections to one Redis server, on the event loop and beside it.

The asyncio client keeps at most ``pool_size`` connections. Each one pipelines: batches are
written back to back and replies matched to them in order, so a connection never waits for
the previous batch's answer before sending the next. A connection that goes silent for
``timeout_s`` while replies are due is dropped and its waiters fail; the next call reconnects.
Replies are parsed by hiredis on the event loop (no thread hop). A blocking redis-py pool beside
it sends the same packed commands for callers outside the event loop. Every Redis or socket
failure leaves as ``FeatureStoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import hiredis
import redis
from feast.infra.online_stores.redis import RedisOnlineStore

from scoring_service.core.errors import FeatureStoreUnavailable
from scoring_service.core.settings import StoreConnection

UNAVAILABLE = "The online feature store cannot be read right now; retry shortly."


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
        self._watchdog: asyncio.Handle | None = None
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
            # A loop runs its timers before it reads its sockets: on a busy loop the replies may
            # be waiting, unread. Look again once the loop has read them (two turns on: a
            # callback added while the loop runs its ready callbacks waits for the next turn's
            # reads), and fail only if the store is still silent then.
            self._watchdog = self._loop.call_soon(self._after_next_read)
        else:
            self._arm(self.timeout_s - silent)

    def _after_next_read(self) -> None:
        self._watchdog = self._loop.call_soon(self._confirm_silence)

    def _confirm_silence(self) -> None:
        self._watchdog = None
        if not self._waiting or self.closed:
            return
        silent = self._loop.time() - self._last_reply
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


def pack(*args: bytes | str | int) -> bytes:
    """One command as RESP bytes."""
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
        return cls.all_from_connection_string(connection_string)[0]

    @classmethod
    def all_from_connection_string(cls, connection_string: str) -> list[RedisEndpoint]:
        """Every ``host:port`` of the string (a cluster's seed nodes), with its options."""
        nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
        first = cls(
            host=str(nodes[0]["host"]),
            port=int(nodes[0].get("port", 6379)),
            db=int(params.get("db", 0) or 0),
            username=None if params.get("username") is None else str(params["username"]),
            password=None if params.get("password") is None else str(params["password"]),
            ssl=bool(params.get("ssl", False)),
        )
        return [first.at(str(n["host"]), int(n.get("port", 6379))) for n in nodes]

    @property
    def address(self) -> tuple[str, int]:
        """(host, port)."""
        return self.host, self.port

    def at(self, host: str, port: int) -> RedisEndpoint:
        """Another server with the same credentials and TLS (a cluster's other nodes)."""
        return replace(self, host=host, port=port)


class RedisPipelineClient:
    """Pipelined Redis connections: the event loop's for serving, a blocking pool beside it.

    At most ``pool_size`` connections of each kind. A request goes to an idle connection, to a
    new one while under the bound, else behind the least busy one (replies come in order).
    """

    def __init__(self, endpoint: RedisEndpoint, connection: StoreConnection | None = None) -> None:
        connection = connection or StoreConnection.defaults()
        self.endpoint = endpoint
        self.timeout_s = connection.timeout_s
        self.connect_timeout_s = connection.connect_timeout_s
        self.pool_size = connection.pool_size
        self._connections: list[_Pipeline] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening = 0
        self._handshake = self._handshake_commands()
        # Fail fast (no retries): callers have deadlines; the next call reconnects.
        self._sync = redis.Redis(
            host=endpoint.host,
            port=endpoint.port,
            db=endpoint.db,
            username=endpoint.username,
            password=endpoint.password,
            ssl=endpoint.ssl,
            **connection.redis_py_options("redis"),  # type: ignore[arg-type]
        )

    async def execute(self, commands: Sequence[bytes], keys: Sequence[bytes]) -> list[Any]:
        """Packed commands in one pipeline; their replies, in order (``request``). The keys
        matter to a cluster only: one server holds them all."""
        return await self.request(b"".join(commands), len(commands))

    def execute_sync(self, commands: Sequence[bytes], keys: Sequence[bytes]) -> list[Any]:
        """The same with the blocking client (``request_sync``)."""
        return self.request_sync(b"".join(commands), len(commands))

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
        """The same with the blocking client. Error replies come back as redis-py's exception
        objects in the list (a cluster's redirections among them)."""
        pool = self._sync.connection_pool
        try:
            connection = pool.get_connection()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise FeatureStoreUnavailable(UNAVAILABLE) from exc
        try:
            connection.send_packed_command([payload], check_health=False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(connection.read_response())
                except redis.exceptions.ResponseError as error:
                    replies.append(error)  # read whole: the connection stays in step
            return replies
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
        (reply,) = await self.request(pack("PING"), 1)
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
                commands.append(pack("AUTH", self.endpoint.username, self.endpoint.password))
            else:
                commands.append(pack("AUTH", self.endpoint.password))
        if self.endpoint.db:
            commands.append(pack("SELECT", self.endpoint.db))
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
