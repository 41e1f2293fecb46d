"""Reads from a Redis Cluster: commands routed by hash slot, one pipeline per node.

Feast's keys carry no hash tag of their own (``serialize_entity_key`` + project, binary), so
each key's slot is CRC16 of the key as Redis computes it: redis-py's ``key_slot``, which
applies the hash-tag rule too should a key happen to hold ``{...}``. A read groups its
commands by the master that owns each slot (the topology, from ``CLUSTER SLOTS``), sends one
pipeline per master, all concurrently, and puts the replies back in command order.

The topology is a snapshot that can be wrong for a while; the replies say so:

- ``MOVED slot host:port``: the slot has a new owner (resharding, or a failover seen late).
  The snapshot is patched for that slot, the command goes to the new owner, and a full refresh
  runs in the background.
- ``ASK slot host:port``: the slot is migrating and this key has moved already. The command
  goes once to the target, after ``ASKING``; the snapshot is unchanged.
- A node that cannot be reached (killed, or failing over): the topology is read again from
  another node, and commands whose slot now has another owner are sent there; otherwise the
  read fails with ``FeatureStoreUnavailable`` and the outage policy answers. Until a replica is
  promoted the refresh finds the same dead master, and reads of its slots keep failing fast.

Redirections are followed a few times per read, like redis-py's cluster client does. Every node
is a ``RedisPipelineClient`` (event loop and blocking), opened on first use with the seed's
credentials and TLS.

Why one module of this length: slot routing, MOVED/ASK redirections and topology refreshes are one
protocol sharing one snapshot; split, its invariants would cross module boundaries.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import hiredis
import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from scoring_service.core.errors import FeatureStoreUnavailable
from scoring_service.core.settings import StoreConnection
from scoring_service.redis.pipeline import (
    UNAVAILABLE,
    RedisEndpoint,
    RedisPipelineClient,
    pack,
)

logger = logging.getLogger(__name__)

Address = tuple[str, int]

MAX_REDIRECTS = 5
"""Rounds of MOVED/ASK (or re-routing after a refresh) one read follows before giving up."""

REFRESH_INTERVAL_S = 0.1
"""A topology read this recently is reused instead of asking again (a dead node makes every
read fail; they need not each ask for the topology)."""

CLUSTER_SLOTS = pack("CLUSTER", "SLOTS")
ASKING = pack("ASKING")


@dataclass(frozen=True)
class Redirect:
    """A MOVED or ASK reply: where the key's slot is served now."""

    moved: bool
    slot: int
    address: Address


def redirect_of(reply: Any, replied_by: Address) -> Redirect | None:
    """The redirection a reply asks for, or None. Understands hiredis' error replies (event
    loop) and redis-py's (blocking client); an empty host means the replying node's host."""
    if isinstance(reply, redis.exceptions.AskError):  # MovedError is one too
        moved = isinstance(reply, redis.exceptions.MovedError)
        return Redirect(moved, reply.slot_id, (reply.host or replied_by[0], reply.port))
    if isinstance(reply, hiredis.ReplyError):
        kind, _, rest = str(reply).partition(" ")
        if kind in ("MOVED", "ASK"):
            slot, _, target = rest.partition(" ")
            host, _, port = target.rpartition(":")
            return Redirect(kind == "MOVED", int(slot), (host or replied_by[0], int(port)))
    return None


def _address(node: Sequence[Any], queried: Address) -> Address:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    if host in ("", "?"):  # the node does not know its own address: the one we asked
        host = queried[0]
    return host, int(node[1])


@dataclass(frozen=True)
class Topology:
    """Which master serves each slot, and the replicas of each master."""

    owners: tuple[Address | None, ...]  # one per slot
    replicas: dict[Address, tuple[Address, ...]] = field(default_factory=dict)
    read_at: float = 0.0  # time.monotonic()

    @classmethod
    def from_cluster_slots(cls, reply: Sequence[Any], queried: Address) -> Topology:
        """Parse a ``CLUSTER SLOTS`` reply: [start, end, master, replica...] per range."""
        owners: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        replicas: dict[Address, tuple[Address, ...]] = {}
        for start, end, master, *others in reply:
            address = _address(master, queried)
            owners[int(start) : int(end) + 1] = [address] * (int(end) - int(start) + 1)
            known = replicas.get(address, ())
            replicas[address] = known + tuple(
                a for a in (_address(o, queried) for o in others) if a not in known
            )
        return cls(tuple(owners), replicas, time.monotonic())

    @property
    def masters(self) -> list[Address]:
        """Every master that serves slots."""
        return list(self.replicas)

    @property
    def uncovered(self) -> int:
        """Slots no master serves."""
        return self.owners.count(None)

    def owner(self, key: bytes) -> Address | None:
        """The master serving this key's slot."""
        return self.owners[key_slot(key)]

    def moved(self, slot: int, address: Address) -> Topology:
        """The same topology with one slot served by another master."""
        owners = list(self.owners)
        owners[slot] = address
        replicas = self.replicas if address in self.replicas else {**self.replicas, address: ()}
        return Topology(tuple(owners), replicas, self.read_at)


@dataclass
class _Round:
    """Commands of one read still to be answered, and where each goes."""

    pending: list[int]
    asking: dict[int, Address] = field(default_factory=dict)  # ASK targets, this round only
    moved: bool = False  # the previous round saw a MOVED

    def groups(self, topology: Topology, keys: Sequence[bytes]) -> dict[Address, list[int]]:
        """Commands by the node they go to; FeatureStoreUnavailable for a slot nobody serves."""
        out: dict[Address, list[int]] = {}
        for i in self.pending:
            address = self.asking.get(i) or topology.owner(keys[i])
            if address is None:
                raise FeatureStoreUnavailable(UNAVAILABLE)
            out.setdefault(address, []).append(i)
        return out

    def payload(self, indices: list[int], commands: Sequence[bytes]) -> tuple[bytes, int]:
        """One node's pipeline: its commands, each ASK'd one preceded by ASKING."""
        parts = []
        for i in indices:
            if i in self.asking:
                parts.append(ASKING)
            parts.append(commands[i])
        return b"".join(parts), len(parts)

    def replies_of(self, indices: list[int], got: list[Any]) -> list[Any]:
        """The commands' own replies (an ASKING's OK dropped)."""
        if not self.asking:
            return got
        out, position = [], 0
        for i in indices:
            position += 1 if i in self.asking else 0
            out.append(got[position])
            position += 1
        return out


class RedisClusterClient:
    """Pipelined reads from a Redis Cluster; the same interface as ``RedisPipelineClient``."""

    def __init__(
        self, seeds: Sequence[RedisEndpoint], connection: StoreConnection | None = None
    ) -> None:
        if not seeds:
            raise ValueError("a Redis Cluster needs at least one seed node")
        # Cluster nodes have one database: no SELECT in the handshake.
        self.seeds = [replace(seed, db=0) for seed in seeds]
        self._template = self.seeds[0]
        self.connection = connection or StoreConnection.defaults()
        self.topology: Topology | None = None
        self._nodes: dict[Address, RedisPipelineClient] = {}
        self._lock = threading.Lock()  # the readiness probe reads from a worker thread
        self._failed: dict[Address, float] = {}  # address -> when it last failed
        self._refreshing: tuple[asyncio.AbstractEventLoop, asyncio.Task[Topology]] | None = None

    # --- nodes and topology ------------------------------------------------------------------

    def node(self, address: Address) -> RedisPipelineClient:
        """The client of one node, opened on first use."""
        client = self._nodes.get(address)
        if client is None:
            with self._lock:
                client = self._nodes.get(address)
                if client is None:
                    client = RedisPipelineClient(self._template.at(*address), self.connection)
                    self._nodes[address] = client
        return client

    def _candidates(self) -> list[Address]:
        """Nodes to ask for the topology: known ones, then seeds; recently failed ones last."""
        known: list[Address] = []
        if self.topology is not None:
            for master, replicas in self.topology.replicas.items():
                known += [master, *replicas]
        known += [seed.address for seed in self.seeds]
        unique = list(dict.fromkeys(known))
        return sorted(unique, key=lambda a: self._failed.get(a, 0.0))

    def _adopt(self, reply: Any, address: Address) -> Topology | None:
        if isinstance(reply, Exception) or not isinstance(reply, list) or not reply:
            return None  # an error, or a node not (yet) in a cluster
        topology = Topology.from_cluster_slots(reply, address)
        previous, self.topology = self.topology, topology
        if previous is None or previous.owners != topology.owners:
            logger.info(
                "Redis Cluster topology: masters %s, %d slots unserved",
                ", ".join(f"{h}:{p}" for h, p in topology.masters),
                topology.uncovered,
            )
        return topology

    def _fresh(self) -> Topology | None:
        topology = self.topology
        if topology is not None and time.monotonic() - topology.read_at < REFRESH_INTERVAL_S:
            return topology
        return None

    async def refresh(self, *, force: bool = False) -> Topology:
        """Read the topology from the first node that answers (one read at a time)."""
        if not force and (fresh := self._fresh()) is not None:
            return fresh
        # Shielded: a caller cancelled at its deadline leaves the refresh to the others.
        return await asyncio.shield(self._refresh_task())

    def _refresh_task(self) -> asyncio.Task[Topology]:
        """The refresh in progress on this loop, or a new one."""
        loop = asyncio.get_running_loop()
        running = self._refreshing
        if running is None or running[0] is not loop or running[1].done():
            task = loop.create_task(self._discover())
            task.add_done_callback(_ignore_failure)  # its callers see the failure
            running = self._refreshing = (loop, task)
        return running[1]

    async def _discover(self) -> Topology:
        for address in self._candidates():
            try:
                (reply,) = await self.node(address).request(CLUSTER_SLOTS, 1)
            except FeatureStoreUnavailable:
                self._failed[address] = time.monotonic()
                continue
            topology = self._adopt(reply, address)
            if topology is not None:
                return topology
        raise FeatureStoreUnavailable(UNAVAILABLE)

    def refresh_sync(self, *, force: bool = False) -> Topology:
        """The same with the blocking clients."""
        if not force and (fresh := self._fresh()) is not None:
            return fresh
        for address in self._candidates():
            try:
                (reply,) = self.node(address).request_sync(CLUSTER_SLOTS, 1)
            except FeatureStoreUnavailable:
                self._failed[address] = time.monotonic()
                continue
            topology = self._adopt(reply, address)
            if topology is not None:
                return topology
        raise FeatureStoreUnavailable(UNAVAILABLE)

    def _follow(
        self,
        work: _Round,
        groups: dict[Address, list[int]],
        results: list[list[Any] | BaseException],
        replies: list[Any],
    ) -> tuple[_Round, list[Address]]:
        """File each node's replies; the next round holds what was redirected or not read.
        Returns it and the nodes that could not be read; MOVED patches the topology."""
        following = _Round([])
        failed: list[Address] = []
        topology = self.topology
        for (address, indices), got in zip(groups.items(), results, strict=True):
            if isinstance(got, BaseException):
                if not isinstance(got, FeatureStoreUnavailable):
                    raise got
                self._failed[address] = time.monotonic()
                failed.append(address)
                following.pending += indices
                continue
            for i, reply in zip(indices, work.replies_of(indices, got), strict=True):
                replies[i] = reply
                redirect = redirect_of(reply, address)
                if redirect is None:
                    continue
                following.pending.append(i)
                if redirect.moved:
                    if topology is not None:
                        topology = topology.moved(redirect.slot, redirect.address)
                else:
                    following.asking[i] = redirect.address
        if topology is not self.topology and topology is not None:
            self.topology = topology
            following.moved = True
        return following, failed

    # --- reads -------------------------------------------------------------------------------

    async def execute(self, commands: Sequence[bytes], keys: Sequence[bytes]) -> list[Any]:
        """Commands routed by their keys' slots, one pipeline per node, concurrently; their
        replies in command order. Error replies come back as exception objects; a node that
        cannot be read, or a slot nobody serves, raises FeatureStoreUnavailable."""
        topology = self.topology or await self.refresh()
        replies: list[Any] = [None] * len(commands)
        work = _Round(list(range(len(commands))))
        for _ in range(MAX_REDIRECTS + 1):
            groups = work.groups(topology, keys)
            results = await asyncio.gather(
                *(self._send(a, work, indices, commands) for a, indices in groups.items()),
                return_exceptions=True,
            )
            work, failed = self._follow(work, groups, results, replies)
            if not work.pending:
                return replies
            if failed:
                # Dead, or failing over: read the topology again; go on only if it moved.
                before = [topology.owner(keys[i]) for i in work.pending]
                topology = await self.refresh()
                if before == [topology.owner(keys[i]) for i in work.pending]:
                    raise FeatureStoreUnavailable(UNAVAILABLE)
            else:
                topology = self.topology or topology
                if work.moved:
                    self._refresh_soon()
        raise FeatureStoreUnavailable(UNAVAILABLE)

    async def _send(
        self, address: Address, work: _Round, indices: list[int], commands: Sequence[bytes]
    ) -> list[Any]:
        payload, count = work.payload(indices, commands)
        return await self.node(address).request(payload, count)

    def _refresh_soon(self) -> None:
        """After a MOVED: read the whole topology in the background (more has likely moved)."""
        if self._fresh() is None:
            self._refresh_task()

    def execute_sync(self, commands: Sequence[bytes], keys: Sequence[bytes]) -> list[Any]:
        """The same with the blocking clients, node after node."""
        topology = self.topology or self.refresh_sync()
        replies: list[Any] = [None] * len(commands)
        work = _Round(list(range(len(commands))))
        for _ in range(MAX_REDIRECTS + 1):
            groups = work.groups(topology, keys)
            results = [
                _capture(self._send_sync, address, work, indices, commands)
                for address, indices in groups.items()
            ]
            work, failed = self._follow(work, groups, results, replies)
            if not work.pending:
                return replies
            if failed:
                before = [topology.owner(keys[i]) for i in work.pending]
                topology = self.refresh_sync()
                if before == [topology.owner(keys[i]) for i in work.pending]:
                    raise FeatureStoreUnavailable(UNAVAILABLE)
            else:
                topology = self.topology or topology
                if work.moved:
                    topology = self.refresh_sync()
        raise FeatureStoreUnavailable(UNAVAILABLE)

    def _send_sync(
        self, address: Address, work: _Round, indices: list[int], commands: Sequence[bytes]
    ) -> list[Any]:
        payload, count = work.payload(indices, commands)
        return self.node(address).request_sync(payload, count)

    # --- health ------------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise FeatureStoreUnavailable unless every slot has a master that answers now: the
        topology is read afresh, then each master is pinged (blocking)."""
        topology = self.refresh_sync(force=True)
        if topology.uncovered:
            raise FeatureStoreUnavailable(UNAVAILABLE)
        for address in topology.masters:
            self.node(address).ping()

    async def ping_async(self) -> None:
        """The same check on the event loop (it opens each master's connection too)."""
        topology = await self.refresh(force=True)
        if topology.uncovered:
            raise FeatureStoreUnavailable(UNAVAILABLE)
        await asyncio.gather(*(self.node(a).ping_async() for a in topology.masters))

    def close(self) -> None:
        """Close every node's connections."""
        with self._lock:
            nodes, self._nodes = list(self._nodes.values()), {}
        for client in nodes:
            client.close()


def _capture(call: Callable[..., list[Any]], *args: Any) -> list[Any] | BaseException:
    try:
        return call(*args)
    except FeatureStoreUnavailable as exc:
        return exc


def _ignore_failure(task: asyncio.Task[Topology]) -> None:
    """Retrieve a refresh's failure, so that one nobody awaited is not reported as lost."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("topology refresh failed: %r", task.exception())
