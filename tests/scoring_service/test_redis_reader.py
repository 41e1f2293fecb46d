"""The fast Redis reader returns exactly what Feast's own get_online_features returns.

Against a real redis-server filled by ``feast materialize-incremental`` (the ``redis_repo``
fixture), plus rows planted through Feast's ``write_to_online_store``: entities older than their
view's TTL, null values, negative and multi-byte integers, sub-second event times. For random
entities (known, planted, unknown, repeated, and absent from the request), values, event
timestamps and statuses must equal Feast's answer, and the SDK reader's.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureStore
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp

from feature_repo.layout import EVIDENCE_TAG, ViewSpec
from scoring_service.errors import FeatureStoreUnavailable
from scoring_service.features import (
    MISSING,
    NOT_REQUESTED,
    PRESENT,
    STALE,
    FeastOnlineReader,
    FeatureBatch,
    StoreLayout,
)
from scoring_service.redis_reader import (
    RedisEndpoint,
    RedisFeatureReader,
    RedisPipelineClient,
    ViewCodec,
    decode_timestamp,
    decode_value,
    fast_read_refusal,
)
from tests.conftest import free_port

T = TypeVar("T")

pytestmark = pytest.mark.redis

YAML = "feature_store.redis.yaml"


def on_loop(client: RedisPipelineClient, call: Callable[[], Awaitable[T]]) -> T:
    """Run one call on a fresh event loop, closing the client's connections before it ends."""

    async def main() -> T:
        try:
            return await call()
        finally:
            client.close()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def store(redis_repo: Path) -> FeatureStore:
    return FeatureStore(repo_path=str(redis_repo), fs_yaml_file=redis_repo / YAML)


@pytest.fixture(scope="module")
def layout(store: FeatureStore) -> StoreLayout:
    """Every feature view of the repository (several may share a join key)."""
    views = {}
    for view in sorted(store.list_feature_views(), key=lambda v: v.name):
        ttl = int(view.ttl.total_seconds()) if view.ttl else None
        views[view.name] = ViewSpec(
            view.join_keys[0],
            ttl,
            [f.name for f in view.features],
            evidence=view.tags.get(EVIDENCE_TAG, "required") != "optional",
        )
    return StoreLayout.from_views(views)


@pytest.fixture(scope="module")
def planted(store: FeatureStore, layout: StoreLayout) -> dict[str, list[str]]:
    """Rows written through Feast's own write path: stale, nulls, odd integers, sub-seconds."""
    now = datetime.now(UTC)
    out: dict[str, list[str]] = {}
    for view in layout.views:
        fv = store.get_feature_view(view.name)
        types = {f.name: f.dtype.to_value_type().name for f in fv.features}
        ttl = timedelta(seconds=view.ttl_seconds or 86_400)
        rows = []
        for i in range(6):
            stale = i < 2
            stamp = now - (ttl + timedelta(days=1) if stale else timedelta(minutes=5 + i))
            stamp += timedelta(microseconds=123_457 * (i + 1))  # sub-second event times
            row: dict[str, object] = {
                view.join_key: f"parity_{view.name}_{i}",
                "event_timestamp": stamp,
                "created_timestamp": stamp,
            }
            for j, name in enumerate(view.features):
                if i == 3 and j % 2 == 0:
                    row[name] = None  # null value in an existing row
                elif types[name] in ("INT64", "INT32"):
                    row[name] = [-5, 300, 2**40, 0, 127, 128][(i + j) % 6]
                else:
                    row[name] = [0.1, -2.5, 1e30, 0.0, 3.0, 7.25][(i + j) % 6]
            rows.append(row)
        frame = pd.DataFrame(rows)
        for name in view.features:
            if types[name] in ("INT64", "INT32"):
                frame[name] = frame[name].astype("Int64")
        store.write_to_online_store(view.name, frame)
        out[view.join_key] = out.get(view.join_key, []) + [str(r[view.join_key]) for r in rows]
    return out


def random_keys(
    rng: np.random.Generator,
    layout: StoreLayout,
    known: dict[str, list[str]],
    planted: dict[str, list[str]],
    n: int,
) -> dict[str, list[str | None]]:
    """n requests mixing known, planted, unknown, repeated and absent entities."""
    keys: dict[str, list[str | None]] = {}
    for join_key in {v.join_key for v in layout.views}:
        pool = known.get(join_key, [])
        column: list[str | None] = []
        for _ in range(n):
            kind = rng.integers(0, 10)
            if kind < 5 and pool:
                column.append(pool[rng.integers(0, len(pool))])
            elif kind < 7:
                column.append(planted[join_key][rng.integers(0, len(planted[join_key]))])
            elif kind < 8:
                column.append(f"never_seen_{join_key}_{rng.integers(0, 10**9)}")
            elif kind < 9 and column:
                column.append(column[rng.integers(0, len(column))])  # repeated in the request
            else:
                column.append(None)  # not part of this request
        if not any(c is not None for c in column):
            column[0] = pool[0] if pool else planted[join_key][0]
        keys[join_key] = column
    return keys


def expected_from_feast(
    store: FeatureStore, layout: StoreLayout, keys: dict[str, list[str | None]]
) -> tuple[dict, float, float]:
    """Feast's answer per view: (values [n, f], event seconds [n], found [n]) for requested
    rows, with the wall clock before and after the call."""
    before = time.time()
    out = {}
    for view in layout.views:
        column = keys[view.join_key]
        wanted = [i for i, k in enumerate(column) if k is not None]
        response = store.get_online_features(
            features=[f"{view.name}:{f}" for f in view.features],
            entity_rows=[{view.join_key: column[i]} for i in wanted],
        )
        answer = response.to_dict()
        names = list(response.proto.metadata.feature_names.val)
        results = {name: vector for name, vector in zip(names, response.proto.results, strict=True)}
        first = results[view.features[0]]
        stamps = np.array([t.seconds + t.nanos / 1e9 for t in first.event_timestamps])
        values = np.array(
            [
                [np.nan if answer[f][r] is None else answer[f][r] for f in view.features]
                for r in range(len(wanted))
            ],
            dtype=np.float64,
        ).reshape(len(wanted), len(view.features))
        out[view.name] = (wanted, values, stamps)
    return out, before, time.time()


def assert_matches_feast(
    batch: FeatureBatch, layout: StoreLayout, keys: dict, feast: dict, before: float, after: float
) -> None:
    """Values per view as Feast returns them; per entity, the status and event time the rule of
    ``feature_repo.online`` gives, worked out here from Feast's answers: the most severe status
    among the entity's evidence views (missing > stale > present), the oldest row's event time
    unless missing. Requests on a TTL boundary during the call are left out."""
    n = len(next(iter(keys.values())))
    expected: dict[str, list[tuple[int, float] | None]] = {}  # view -> per request
    checked = 0
    for view in layout.views:
        wanted, values, stamps = feast[view.name]
        width, offset = len(view.features), view.offset
        block = batch.values[:, offset : offset + width]
        per_request: list[tuple[int, float] | None] = [(NOT_REQUESTED, np.nan)] * n
        absent = sorted(set(range(n)) - set(wanted))
        assert np.isnan(block[absent]).all()
        for r, i in enumerate(wanted):
            if stamps[r] == 0:  # Feast: no row for this key
                assert np.isnan(block[i]).all() and np.isnan(values[r]).all()
                per_request[i] = (MISSING, np.nan)
                continue
            stale_before = view.ttl_seconds is not None and before - stamps[r] > view.ttl_seconds
            stale_after = view.ttl_seconds is not None and after - stamps[r] > view.ttl_seconds
            if stale_before != stale_after:
                per_request[i] = None  # on the TTL boundary during the call
                continue
            if stale_after:
                assert np.isnan(block[i]).all()  # withheld, as in training
            else:
                np.testing.assert_array_equal(block[i], values[r].astype(np.float32))
            per_request[i] = (STALE if stale_after else PRESENT, stamps[r])
            checked += 1
        expected[view.name] = per_request
    severity = {NOT_REQUESTED: 0, PRESENT: 1, STALE: 2, MISSING: 3}
    for key in layout.join_keys:
        views = [v for v in layout.views if v.join_key == key]
        deciding = [v.name for v in views if v.evidence] or [v.name for v in views]
        for i in range(n):
            rows = [expected[name][i] for name in deciding]
            if any(row is None for row in rows):
                continue
            status = max((row[0] for row in rows), key=severity.__getitem__)  # type: ignore[index]
            stamps_i = [row[1] for row in rows if row[1] == row[1]]  # type: ignore[index]
            assert batch.status[key][i] == status
            if status in (MISSING, NOT_REQUESTED) or not stamps_i:
                assert np.isnan(batch.event_timestamp[key][i])
            else:
                assert batch.event_timestamp[key][i] == pytest.approx(min(stamps_i), abs=1e-6)
    assert checked > 0


@pytest.fixture(scope="module")
def known(redis_repo: Path) -> dict[str, list[str]]:
    """Entities materialized into the store (from the repository's offline tables)."""
    out = {}
    for path in (redis_repo / "data").glob("*_features.parquet"):
        frame = pd.read_parquet(path)
        join_key = frame.columns[0]
        out[join_key] = frame[join_key].drop_duplicates().tolist()
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parity_with_feast(store, layout, planted, known, seed) -> None:
    """Values, event timestamps and statuses equal Feast's, on both client paths."""
    reader = RedisFeatureReader.from_store(store, layout)
    sdk = FeastOnlineReader(store, layout)
    try:
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
                # The SDK reader has whole seconds (OnlineResponse.to_dict drops nanos).
                np.testing.assert_array_equal(
                    np.floor(batch.event_timestamp[key]), via_sdk.event_timestamp[key]
                )
        statuses = np.concatenate([fast_async.status[k] for k in fast_async.status])
        assert {PRESENT, MISSING, STALE, NOT_REQUESTED} <= set(statuses.tolist())
    finally:
        reader.close()


def test_small_reads_and_empty_requests(store, layout, planted) -> None:
    """One request; a request for no entity at all reads nothing."""
    reader = RedisFeatureReader.from_store(store, layout)
    try:
        keys = {k: [planted[k][3]] for k in planted}
        feast, before, after = expected_from_feast(store, layout, keys)
        assert_matches_feast(
            on_loop(reader.client, lambda: reader.read_async(keys)),
            layout,
            keys,
            feast,
            before,
            after,
        )
        empty = reader.read({k: [None, None] for k in planted})
        assert empty.values.shape == (2, layout.width) and np.isnan(empty.values).all()
        assert all((s == NOT_REQUESTED).all() for s in empty.status.values())
    finally:
        reader.close()


def test_keys_are_feasts(store, layout) -> None:
    for view in layout.views:
        codec = ViewCodec.build(view, store.config.project)
        for entity_id in ("card_0000001", "131.235.53.79", "2001:db8::1", "m_ünïcødé", ""):
            proto = EntityKeyProto(
                join_keys=[view.join_key], entity_values=[ValueProto(string_val=entity_id)]
            )
            assert codec.redis_key(entity_id) == _redis_key(store.config.project, proto, 3)


@pytest.mark.parametrize(
    "proto",
    [
        ValueProto(int64_val=0),
        ValueProto(int64_val=127),
        ValueProto(int64_val=128),
        ValueProto(int64_val=-1),
        ValueProto(int64_val=-(2**63)),
        ValueProto(int64_val=2**53 + 1),
        ValueProto(int32_val=-7),
        ValueProto(double_val=0.0),
        ValueProto(double_val=-1.5e-300),
        ValueProto(float_val=0.1),
        ValueProto(bool_val=True),
        ValueProto(unix_timestamp_val=1_700_000_000),
        ValueProto(),
    ],
)
def test_decode_value_equals_protobuf(proto: ValueProto) -> None:
    kind = proto.WhichOneof("val")
    expected = np.nan if kind is None else float(getattr(proto, kind))
    got = decode_value(proto.SerializeToString())
    assert got == expected or (np.isnan(got) and np.isnan(expected))


def test_decode_refuses_text_and_reads_absent() -> None:
    assert np.isnan(decode_value(None))
    with pytest.raises(ValueError, match="not numeric"):
        decode_value(ValueProto(string_val="x").SerializeToString())


def test_decode_timestamp() -> None:
    stamp = Timestamp(seconds=1_792_357_200, nanos=123_456_000)
    assert decode_timestamp(stamp.SerializeToString()) == pytest.approx(1_792_357_200.123456)
    assert decode_timestamp(Timestamp(seconds=5).SerializeToString()) == 5.0
    for absent in (None, b"", Timestamp().SerializeToString()):
        assert np.isnan(decode_timestamp(absent))


def test_error_reply_is_store_unavailable(store, layout, redis_server) -> None:
    """A key of the wrong type makes Redis answer an error: mapped, on both paths."""
    view = layout.views[0]
    codec = ViewCodec.build(view, store.config.project)
    client = redis.Redis(port=redis_server.port)
    client.set(codec.redis_key("parity_wrong_type"), b"not a hash")
    reader = RedisFeatureReader.from_store(store, layout)
    keys = {k: ["parity_wrong_type"] for k in {v.join_key for v in layout.views}}
    try:
        with pytest.raises(FeatureStoreUnavailable):
            on_loop(reader.client, lambda: reader.read_async(keys))
        with pytest.raises(FeatureStoreUnavailable):
            reader.read(keys)
        # The connection is usable afterwards.
        on_loop(reader.client, reader.ping_async)
        reader.ping()
    finally:
        client.delete(codec.redis_key("parity_wrong_type"))
        client.close()
        reader.close()


def test_unreachable_store(layout) -> None:
    endpoint = RedisEndpoint(host="127.0.0.1", port=free_port())  # nothing listens
    client = RedisPipelineClient(endpoint, timeout_s=0.2, connect_timeout_s=0.2)
    reader = RedisFeatureReader(layout, client, "fraud_scoring", owns_client=True)
    keys = {k: ["x"] for k in {v.join_key for v in layout.views}}
    with pytest.raises(FeatureStoreUnavailable):
        on_loop(reader.client, lambda: reader.read_async(keys))
    with pytest.raises(FeatureStoreUnavailable):
        reader.read(keys)
    with pytest.raises(FeatureStoreUnavailable):
        reader.ping()
    reader.close()


def test_silent_store_times_out(layout) -> None:
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
    client = RedisPipelineClient(endpoint, timeout_s=0.2, connect_timeout_s=0.5)
    reader = RedisFeatureReader(layout, client, "fraud_scoring", owns_client=True)
    keys = {k: ["x"] for k in {v.join_key for v in layout.views}}
    try:
        started = time.monotonic()
        with pytest.raises(FeatureStoreUnavailable):
            on_loop(reader.client, lambda: reader.read_async(keys))
        assert 0.15 < time.monotonic() - started < 2.0
        with pytest.raises(FeatureStoreUnavailable):
            reader.read(keys)
    finally:
        stop.set()
        thread.join(timeout=2)
        for sock in accepted:
            sock.close()
        server.close()
        reader.close()


def test_refuses_what_it_cannot_read(sqlite_repo: Path, store: FeatureStore) -> None:
    assert fast_read_refusal(store) is None
    sqlite = FeatureStore(repo_path=str(sqlite_repo))
    assert "not redis" in (fast_read_refusal(sqlite) or "")


def test_connection_string_like_feast() -> None:
    endpoint = RedisEndpoint.from_connection_string(
        "redis.internal:6380,db=2,password=s3cret,ssl=true,socket_timeout=0.05"
    )
    assert endpoint == RedisEndpoint(
        host="redis.internal", port=6380, db=2, password="s3cret", ssl=True
    )


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
