"""The online store on a real Redis Cluster: three masters, three replicas (redis-server).

The feature repository is applied and materialized into the cluster with the plain Feast CLI
(``feature_store.redis_cluster.yaml``), and rows are planted and pushed through Feast's own
cluster client. Then:

- the fast reader returns exactly what Feast's ``get_online_features`` returns, reading every
  master in one round;
- rows pushed through the store reach it;
- it follows ASK while a slot migrates and MOVED once it has moved;
- the stream consumer's window state works there and gives the rows it gives on one server;
- a master killed under a stream of requests to the service: every answer comes within the
  deadline, scored or by the outage policy; readiness is false while the killed master's slots
  have no master and true once its replica is promoted; afterwards every answer is scored, and
  the scores equal those before. The test prints the window of outage answers it saw.

The tests run in this order on one cluster; the failover tests restart the killed node, which
rejoins as a replica, so the cluster is whole again after each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureStore
from feast.data_source import PushMode
from redis.crc import key_slot

from feature_pipelines.fraud.events import events_from_frame
from feature_pipelines.fraud.windows import CATALOGUE
from feature_pipelines.streaming.state import WindowState, state_key
from feature_repo import clock
from scoring_service.redis.cluster import RedisClusterClient
from scoring_service.redis.codec import ViewCodec
from scoring_service.redis.reader import RedisFeatureReader
from scoring_service.stages.features import FeastOnlineReader, StoreLayout
from tests.conftest import RedisServer, copy_repo, feast_cli, materialize_end
from tests.fixtures.load import LATE_BOUND_S, OUTAGE_REASON, Load, Probe
from tests.fixtures.redis_cluster import RedisClusterServers, redis_cluster, wait_for
from tests.fixtures.service import API_KEY, Replica, as_request, launch_replica
from tests.fixtures.service import recent as recent
from tests.scoring_service.redis.parity import (
    assert_matches_feast,
    expected_from_feast,
    known_entities,
    on_loop,
    plant_rows,
    random_keys,
    store_layout,
)

pytestmark = pytest.mark.redis

__all__ = ["recent", "redis_cluster"]  # fixtures used here, defined elsewhere

YAML = "feature_store.redis_cluster.yaml"
LITERAL_YAML = "feature_store.redis_cluster.test.yaml"
LABELS = {"not_fraud", "suspicious", "highly_suspicious", "uncertain"}

DEADLINE_MS = 250
"""The stream's deadline (X-Deadline-Ms)."""
STORE_TIMEOUT_MS = 5_000
"""Above deadline + bound: an answer that waited for a store read instead of being cut at its
deadline fails."""
READY_AFTER_PROMOTION_S = 5.0
"""Readiness is true again this soon after the replica says it is master (a few probes)."""
START_S = 180.0
"""Service start-up: Feast import, registry, model load and warm-up on a busy machine."""


@pytest.fixture(scope="module")
def cluster_repo(
    tmp_path_factory: pytest.TempPathFactory,
    feature_tables: dict[str, pd.DataFrame],
    data_end: datetime,
    redis_cluster: RedisClusterServers,
) -> Path:
    """The feature repo applied and materialized into the cluster with the plain Feast CLI."""
    repo = copy_repo(tmp_path_factory.mktemp("repo_cluster") / "feature_repo", feature_tables)
    env = {"REDIS_CONNECTION_STRING": redis_cluster.connection_string}
    feast_cli(repo, "apply", yaml=YAML, env=env)
    feast_cli(repo, "materialize-incremental", materialize_end(data_end), yaml=YAML, env=env)
    # This process's REDIS_CONNECTION_STRING belongs to the single-server fixture: stores opened
    # here, and the service, read a copy naming the cluster's nodes.
    text = (repo / YAML).read_text()
    (repo / LITERAL_YAML).write_text(
        text.replace("${REDIS_CONNECTION_STRING}", redis_cluster.connection_string)
    )
    return repo


@pytest.fixture(scope="module")
def store(cluster_repo: Path) -> FeatureStore:
    return FeatureStore(repo_path=str(cluster_repo), fs_yaml_file=cluster_repo / LITERAL_YAML)


@pytest.fixture(scope="module")
def layout(store: FeatureStore) -> StoreLayout:
    return store_layout(store)


@pytest.fixture(scope="module")
def planted(store: FeatureStore, layout: StoreLayout) -> dict[str, list[str]]:
    return plant_rows(store, layout)


def test_reader_reads_a_cluster(store: FeatureStore, layout: StoreLayout) -> None:
    reader = RedisFeatureReader.from_store(store, layout)
    try:
        assert isinstance(reader.client, RedisClusterClient)
        reader.ping()
        assert reader.client.topology is not None
        assert len(reader.client.topology.masters) == 3
    finally:
        reader.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_parity_with_feast_on_the_cluster(
    store: FeatureStore,
    layout: StoreLayout,
    planted: dict[str, list[str]],
    cluster_repo: Path,
    seed: int,
) -> None:
    """Values, event timestamps and statuses equal Feast's, on both client paths; one read
    spans every master."""
    reader = RedisFeatureReader.from_store(store, layout)
    sdk = FeastOnlineReader(store, layout)
    try:
        known = known_entities(cluster_repo)
        keys = random_keys(np.random.default_rng(seed), layout, known, planted, n=300)
        feast, before, after = expected_from_feast(store, layout, keys)
        fast_async = on_loop(reader.client, lambda: reader.read_async(keys))
        fast_sync = reader.read(keys)
        via_sdk = sdk.read(keys)
        for batch in (fast_async, fast_sync):
            assert_matches_feast(batch, layout, keys, feast, before, after)
            np.testing.assert_array_equal(batch.values, via_sdk.values)
            for key in via_sdk.status:
                np.testing.assert_array_equal(batch.status[key], via_sdk.status[key])
        client = reader.client
        assert isinstance(client, RedisClusterClient) and client.topology is not None
        owners = {client.topology.owner(key) for key in reader.plan(keys).keys}
        assert len(owners) == 3
    finally:
        reader.close()


def test_push_reaches_the_fast_reader(store: FeatureStore, layout: StoreLayout) -> None:
    """A row pushed through Feast's push source (its cluster client writes it) is read back."""
    view = next(v for v in layout.views if v.name == "card_stream_features")
    types = {
        f.name: f.dtype.to_value_type().name for f in store.get_feature_view(view.name).features
    }
    now = clock.now()
    row: dict[str, object] = {
        view.join_key: "pushed_card_1",
        "event_timestamp": now,
        "created_timestamp": now,
    }
    for i, name in enumerate(view.features):
        row[name] = i + 2 if types[name] in ("INT64", "INT32") else i + 0.25
    store.push("card_stream_push", pd.DataFrame([row]), to=PushMode.ONLINE)
    keys: dict[str, list[str | None]] = {key: [None] for key in layout.join_keys}
    keys[view.join_key] = ["pushed_card_1"]
    reader = RedisFeatureReader.from_store(store, layout)
    try:
        feast, before, after = expected_from_feast(store, layout, keys)
        batch = on_loop(reader.client, lambda: reader.read_async(keys))
        assert_matches_feast(batch, layout, keys, feast, before, after)
        block = batch.values[0, view.offset : view.offset + len(view.features)]
        np.testing.assert_array_equal(block, np.asarray([row[f] for f in view.features], "f4"))
    finally:
        reader.close()


def _node_id(redis_cluster: RedisClusterServers, port: int) -> str:
    node_id = redis_cluster.client(port).execute_command("CLUSTER", "MYID")
    return node_id.decode() if isinstance(node_id, bytes) else str(node_id)


def test_follows_ask_and_moved_while_a_slot_migrates(
    redis_cluster: RedisClusterServers,
    store: FeatureStore,
    layout: StoreLayout,
    planted: dict[str, list[str]],
) -> None:
    """A slot migrates from one master to another under a reader holding the old topology:
    mid-way its key answers ASK from the old owner, afterwards MOVED; both paths follow them
    and read what Feast reads."""
    view = next(v for v in layout.views if v.join_key == "card_id")
    entity = planted["card_id"][3]
    key = ViewCodec.build(view, store.config.project).redis_key(entity)
    slot = key_slot(key)
    keys: dict[str, list[str | None]] = {k: [None] for k in layout.join_keys}
    keys["card_id"] = [entity]
    feast, before, after = expected_from_feast(store, layout, keys)

    reader = RedisFeatureReader.from_store(store, layout)
    client = reader.client
    assert isinstance(client, RedisClusterClient)
    stale = client.refresh_sync(force=True)
    source_address = stale.owners[slot]
    assert source_address is not None
    source_port = source_address[1]
    target_port = next(p for p in redis_cluster.masters() if p != source_port)
    source, target = redis_cluster.client(source_port), redis_cluster.client(target_port)
    source_id, target_id = (_node_id(redis_cluster, p) for p in (source_port, target_port))

    def read_both_paths() -> None:
        for read in (reader.read, lambda k: on_loop(client, lambda: reader.read_async(k))):
            client.topology = stale  # the reader has not seen the migration
            assert_matches_feast(read(keys), layout, keys, feast, before, after)

    def migrate(*names: bytes) -> None:
        if names:
            source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *names)

    try:
        others = [k for k in source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)]
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        migrate(key)
        # Mid-way: the old owner answers ASK for the key it no longer holds.
        with pytest.raises(redis.exceptions.AskError) as asked:
            source.execute_command("HMGET", key, b"_")
        assert not isinstance(asked.value, redis.exceptions.MovedError)
        read_both_paths()
        assert client.topology is stale  # ASK leaves the topology as it is
        migrate(*(k for k in others if k != key))
        for port in (target_port, source_port, *redis_cluster.masters()):
            redis_cluster.client(port).execute_command(
                "CLUSTER", "SETSLOT", slot, "NODE", target_id
            )
        # Moved: the old owner answers MOVED, the reader follows and learns the new owner.
        with pytest.raises(redis.exceptions.MovedError):
            source.execute_command("HMGET", key, b"_")
        read_both_paths()
        assert client.topology.owner(key) == ("127.0.0.1", target_port)
    finally:
        reader.close()
        source.close()
        target.close()
    redis_cluster.wait_whole()


def test_window_state_on_the_cluster(
    redis_cluster: RedisClusterServers, redis_server: RedisServer, transactions: pd.DataFrame
) -> None:
    """The stream consumer's window state works on a cluster (redis-py's cluster client): the
    same rows as on one server, idempotent, each entity's key in its own hash-tag slot."""
    events = events_from_frame(transactions.tail(300))
    cluster = redis_cluster.cluster_client()
    single = redis.Redis(port=redis_server.port)
    try:
        on_cluster = WindowState(cluster, CATALOGUE, prefix="test:cluster:rt")
        on_server = WindowState(single, CATALOGUE, prefix="test:cluster:rt")
        first = on_cluster.apply(events)
        expected = on_server.apply(events)
        again = on_cluster.apply(events)
        for table in CATALOGUE.tables:
            pd.testing.assert_frame_equal(first[table], expected[table])
            pd.testing.assert_frame_equal(again[table], expected[table])
        card = events[0].card_id
        key = state_key("test:cluster:rt", "card", card)
        assert key_slot(key.encode()) == key_slot(card.encode())  # the entity is the hash tag
        assert on_cluster.members("card", card) == on_server.members("card", card)
        nodes = {
            cluster.get_node_from_key(state_key("test:cluster:rt", "card", e.card_id)).port
            for e in events
        }
        assert len(nodes) > 1  # the state is spread over the masters
    finally:
        single.delete(*single.keys("test:cluster:rt:*"))
        single.close()
        cluster.close()


# --- a master killed under load ----------------------------------------------------------------


def start_service(repo: Path, model_root: Path, tmp: Path, policy: str) -> Replica:
    """The service on the cluster, on a free port; returns once it is ready. Generous deadlines
    by default; the stream asks for DEADLINE_MS with X-Deadline-Ms."""
    service = launch_replica(
        repo,
        repo / LITERAL_YAML,
        model_root,
        tmp,
        store_timeout_ms=str(STORE_TIMEOUT_MS),
        outage_policy=policy,
    )
    service.wait_ready(START_S)
    return service


def scores(url: str, bodies: list[dict]) -> list[float]:
    """Model scores of the bodies (with the service's own, generous deadline)."""
    out = []
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=60.0) as client:
        for body in bodies:
            answer = client.post("/v1/transactions/score", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["reasons"] != OUTAGE_REASON
            out.append(answer.json()["score"])
    return out


def wait_ready(service: Replica, within: float) -> float:
    """Seconds until the service says it is ready; fails after ``within`` seconds."""
    return wait_for(service.ready, "readiness", within)


@pytest.fixture(scope="module")
def cluster_services(
    cluster_repo: Path, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Replica]]:
    """One service per outage policy on the cluster, started on first use."""
    tmp = tmp_path_factory.mktemp("cluster_services")
    started: dict[str, Replica] = {}

    def get(policy: str) -> Replica:
        if policy not in started:
            started[policy] = start_service(cluster_repo, model_root, tmp, policy)
        return started[policy]

    yield get
    for service in started.values():
        service.stop()


@pytest.mark.timeout(900)  # the first run builds the model package and starts the service
@pytest.mark.parametrize("policy", ["fail", "degrade"])
def test_master_killed_under_load(
    policy: str,
    redis_cluster: RedisClusterServers,
    cluster_services: Callable[[str], Replica],
    store: FeatureStore,
    layout: StoreLayout,
    recent: pd.DataFrame,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = cluster_services(policy)
    bodies = [as_request(row) for _, row in recent.tail(12).iterrows()]
    before = scores(service.url, bodies)
    # The victim serves the first body's card: the stream surely reads its slots.
    view = next(v for v in layout.views if v.join_key == "card_id")
    key = ViewCodec.build(view, store.config.project).redis_key(bodies[0]["card_id"])
    owners = redis_cluster.slot_owners()
    victim = owners[key_slot(key)]
    replica = redis_cluster.masters()[victim][0]

    traffic = Load(service.url, bodies, threads=3, deadline_ms=DEADLINE_MS)
    with traffic, Probe(service.url) as readiness:
        wait_for(lambda: traffic.scored_since(0.0) >= 30, "scored answers before the kill")
        kill_sent = time.monotonic()
        redis_cluster.kill(victim)
        killed_at = time.monotonic()  # the process is gone: its sockets are closed
        unpromoted_until = killed_at  # when the replica was last seen still a replica

        def promoted() -> bool:
            nonlocal unpromoted_until
            asked = time.monotonic()
            if redis_cluster.role(replica) == "master":
                return True
            unpromoted_until = asked
            return False

        wait_for(promoted, "the replica's promotion")
        promoted_at = time.monotonic()
        ready_after = wait_ready(service, READY_AFTER_PROMOTION_S)
        ready_at = promoted_at + ready_after
        wait_for(lambda: traffic.scored_since(ready_at) >= 30, "scored answers after the failover")
    after = scores(service.url, bodies)
    try:
        answers = sorted(traffic.answers, key=lambda a: a.started)
        outage = [a for a in answers if not a.scored]
        with capsys.disabled():
            window = (
                f"from {min(a.started for a in outage) - killed_at:+.2f} s to "
                f"{max(a.started + a.elapsed for a in outage) - killed_at:+.2f} s after the kill"
                if outage
                else "none"
            )
            print(
                f"\n[redis cluster failover, policy {policy}] replica promoted "
                f"{promoted_at - killed_at:.2f} s after the kill, service ready "
                f"{ready_after:.2f} s later; outage answers {window}: {len(outage)} of "
                f"{len(answers)} answers ({sum(1 for a in answers if a.status != 200)} "
                f"non-200); max latency {max(a.elapsed for a in answers) * 1000:.0f} ms "
                f"(deadline {DEADLINE_MS} ms)"
            )
        assert service.process.poll() is None, service.logs()
        assert not traffic.failures, traffic.failures[:5]
        for answer in answers:
            assert answer.elapsed <= DEADLINE_MS / 1000 + LATE_BOUND_S, answer
            assert answer.data is not None
            if answer.scored:
                assert answer.data["label"] in LABELS and 0.0 <= answer.data["score"] <= 1.0
            elif policy == "fail":
                assert answer.status == 503, answer
                assert answer.data["code"] == "feature_store_unavailable", answer
                assert answer.data["retry_after"] == "1"
            else:
                assert answer.status == 200, answer
                assert answer.data["label"] == "uncertain" and answer.data["score"] is None
        assert outage, "the failover should have been felt"
        assert all(kill_sent <= a.started + a.elapsed for a in outage)

        # Readiness tells the truth: false while the slots had no master, true after.
        blind = [p for p in readiness.probes if p[0] >= killed_at and p[1] <= unpromoted_until]
        assert blind and not any(ok for _, _, ok in blind), blind
        # Once recovered, every answer is scored (the first scored one after readiness closes
        # the circuit: answers after it never see the failover again).
        recovered = min(
            a.started + a.elapsed for a in answers if a.started >= ready_at and a.scored
        )
        late = [a for a in answers if a.started >= recovered and not a.scored]
        assert not late, late[:5]
        assert after == before
    finally:
        redis_cluster.start_node(victim)  # it rejoins as a replica of the promoted node
        redis_cluster.wait_whole()
