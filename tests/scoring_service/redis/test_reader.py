"""The fast Redis reader returns exactly what Feast's own get_online_features returns.

Against a real redis-server filled by ``feast materialize-incremental`` (the ``redis_repo``
fixture), plus rows planted through Feast's ``write_to_online_store``: entities older than their
view's TTL, null values, negative and multi-byte integers, sub-second event times. For random
entities (known, planted, unknown, repeated, and absent from the request), values, event
timestamps and statuses must equal Feast's answer, and the SDK reader's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis
from feast import FeatureStore

from scoring_service.core.errors import FeatureStoreUnavailable
from scoring_service.redis.codec import ViewCodec
from scoring_service.redis.reader import (
    BULK_DECODE_ROWS,
    RedisFeatureReader,
    fast_read_refusal,
)
from scoring_service.stages.features import (
    MISSING,
    NOT_REQUESTED,
    PRESENT,
    STALE,
    FeastOnlineReader,
)
from tests.scoring_service.redis.parity import (
    assert_matches_feast,
    expected_from_feast,
    on_loop,
    random_keys,
)

pytestmark = [pytest.mark.clock, pytest.mark.redis]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parity_with_feast(store, layout, planted, known, seed) -> None:
    """Values, event timestamps and statuses equal Feast's, on both client paths and with
    decoding on or off the event loop."""
    reader = RedisFeatureReader.from_store(store, layout)
    sdk = FeastOnlineReader(store, layout)
    try:
        keys = random_keys(np.random.default_rng(seed), layout, known, planted, n=300)
        feast, before, after = expected_from_feast(store, layout, keys)
        off_loop = seed % 2 == 1
        fast_async = on_loop(
            reader.client, lambda: reader.read_async(keys, decode_off_loop=off_loop)
        )
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


def test_error_reply_in_a_large_read(store, layout, planted, redis_server) -> None:
    """An error reply among a large read's replies (decoded in bulk) is mapped too."""
    view = layout.views[0]
    codec = ViewCodec.build(view, store.config.project)
    client = redis.Redis(port=redis_server.port)
    client.set(codec.redis_key("parity_wrong_type"), b"not a hash")
    reader = RedisFeatureReader.from_store(store, layout)
    n = 2 * BULK_DECODE_ROWS
    keys = {k: [planted[k][i % len(planted[k])] for i in range(n)] for k in planted}
    keys[view.join_key][n // 2] = "parity_wrong_type"
    try:
        with pytest.raises(FeatureStoreUnavailable):
            on_loop(reader.client, lambda: reader.read_async(keys, decode_off_loop=True))
        with pytest.raises(FeatureStoreUnavailable):
            reader.read(keys)
    finally:
        client.delete(codec.redis_key("parity_wrong_type"))
        client.close()
        reader.close()


def test_refuses_what_it_cannot_read(sqlite_repo: Path, store: FeatureStore) -> None:
    assert fast_read_refusal(store) is None
    sqlite = FeatureStore(repo_path=str(sqlite_repo))
    assert "not redis" in (fast_read_refusal(sqlite) or "")
