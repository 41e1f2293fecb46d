"""Cluster routing pieces: the topology from CLUSTER SLOTS, redirections, ASKING pipelines.

Reads against a real cluster (parity with Feast, MOVED and ASK during a slot migration, a
master killed under load) are in ``tests/integration/test_redis_cluster.py``.
"""

from __future__ import annotations

import hiredis
import pytest
import redis
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from redis.crc import key_slot

from scoring_service.core.errors import FeatureStoreUnavailable
from scoring_service.redis.cluster import (
    ASKING,
    Redirect,
    RedisClusterClient,
    Topology,
    _Round,
    redirect_of,
)
from scoring_service.redis.pipeline import RedisEndpoint, pack

SLOTS = [
    [0, 5460, [b"10.0.0.1", 7000, b"id-a", []], [b"10.0.0.4", 7003, b"id-d", []]],
    [5461, 10922, [b"", 7001, b"id-b", []]],  # a node that does not know its own address
    [10923, 16000, [b"10.0.0.3", 7002, b"id-c", []], [b"10.0.0.6", 7005, b"id-f", []]],
    [16001, 16383, [b"10.0.0.1", 7000, b"id-a", []], [b"10.0.0.4", 7003, b"id-d", []]],
]


def error_reply(text: bytes) -> hiredis.ReplyError:
    reader = hiredis.Reader()
    reader.feed(b"-" + text + b"\r\n")
    reply = reader.gets()
    assert isinstance(reply, hiredis.ReplyError)
    return reply


def test_topology_from_cluster_slots() -> None:
    topology = Topology.from_cluster_slots(SLOTS, queried=("10.0.0.9", 7009))
    assert topology.owners[0] == topology.owners[5460] == ("10.0.0.1", 7000)
    assert topology.owners[5461] == ("10.0.0.9", 7001)  # the address we asked
    assert topology.owners[16383] == ("10.0.0.1", 7000)
    assert topology.masters == [("10.0.0.1", 7000), ("10.0.0.9", 7001), ("10.0.0.3", 7002)]
    assert topology.replicas[("10.0.0.1", 7000)] == (("10.0.0.4", 7003),)
    assert topology.uncovered == 0
    partial = Topology.from_cluster_slots(SLOTS[:2], queried=("10.0.0.9", 7009))
    assert partial.uncovered == 16384 - 10923


def test_owner_is_the_slot_of_feasts_key() -> None:
    """Feast's keys have no hash tag: the slot is CRC16 of the whole binary key."""
    topology = Topology.from_cluster_slots(SLOTS, queried=("10.0.0.9", 7009))
    proto = EntityKeyProto(join_keys=["card_id"], entity_values=[ValueProto(string_val="c_1")])
    key = _redis_key("fraud_scoring", proto, 3)
    assert b"{" not in key
    slot = key_slot(key)
    assert topology.owner(key) == topology.owners[slot]
    moved = topology.moved(slot, ("10.0.0.7", 7006))
    assert moved.owner(key) == ("10.0.0.7", 7006)
    assert topology.owner(key) != ("10.0.0.7", 7006)  # snapshots are not changed in place
    assert ("10.0.0.7", 7006) in moved.masters


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (error_reply(b"MOVED 3999 127.0.0.1:6381"), Redirect(True, 3999, ("127.0.0.1", 6381))),
        (error_reply(b"ASK 12 10.1.2.3:7000"), Redirect(False, 12, ("10.1.2.3", 7000))),
        (error_reply(b"ASK 12 :7000"), Redirect(False, 12, ("10.9.9.9", 7000))),
        (
            redis.exceptions.MovedError("3999 127.0.0.1:6381"),
            Redirect(True, 3999, ("127.0.0.1", 6381)),
        ),
        (redis.exceptions.AskError("7 127.0.0.1:6382"), Redirect(False, 7, ("127.0.0.1", 6382))),
        (error_reply(b"WRONGTYPE Operation against a key holding the wrong kind of value"), None),
        (redis.exceptions.ResponseError("CLUSTERDOWN The cluster is down"), None),
        ([b"1", None], None),
    ],
)
def test_redirections(reply: object, expected: Redirect | None) -> None:
    assert redirect_of(reply, replied_by=("10.9.9.9", 7009)) == expected


def test_asked_commands_are_preceded_by_asking() -> None:
    commands = [pack("HMGET", f"k{i}", "f") for i in range(4)]
    work = _Round([0, 1, 2, 3], asking={1: ("h", 1), 3: ("h", 1)})
    payload, count = work.payload([0, 1, 3], commands)
    assert payload == commands[0] + ASKING + commands[1] + ASKING + commands[3]
    assert count == 5
    assert work.replies_of([0, 1, 3], ["r0", "OK", "r1", "OK", "r3"]) == ["r0", "r1", "r3"]


def test_slot_without_master_is_unavailable() -> None:
    topology = Topology.from_cluster_slots(SLOTS[:1], queried=("10.0.0.9", 7009))
    keys = [b"a", b"b", b"c"]
    uncovered = [k for k in keys if topology.owner(k) is None]
    assert uncovered
    with pytest.raises(FeatureStoreUnavailable):
        _Round([0, 1, 2]).groups(topology, keys)


def test_cluster_client_seeds_have_no_database() -> None:
    seeds = RedisEndpoint.all_from_connection_string("a:7000,b:7001,password=p,db=0,ssl=true")
    assert [s.address for s in seeds] == [("a", 7000), ("b", 7001)]
    client = RedisClusterClient(seeds)
    assert client.node(("c", 7002)).endpoint == RedisEndpoint("c", 7002, 0, None, "p", True)
    client.close()
