"""The online feature client over Feast's SDK: entity keys in, the model-ordered float32 matrix
and each entity's status (present, stale, missing, not requested) and age out; a store that
cannot be read is FeatureStoreUnavailable, never a third-party exception.

It reads a copy of the session's SQLite repository (applied and materialized by the Feast CLI),
where a row too old for its view's TTL is planted, and a Redis store on a port where nothing
listens.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from feature_repo import clock
from feature_repo.layout import open_store
from scoring_service.core.errors import FeatureStoreUnavailable
from scoring_service.deployments.packages import load_package
from scoring_service.stages.features import (
    MISSING,
    NOT_REQUESTED,
    PRESENT,
    STALE,
    FeastOnlineReader,
    StoreLayout,
)
from tests.conftest import free_port

STALE_CARD = "card_planted_past_its_ttl"


@pytest.fixture(scope="module")
def repo(sqlite_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's repository: this module writes to its online store."""
    return Path(shutil.copytree(sqlite_repo, tmp_path_factory.mktemp("features") / "repo"))


@pytest.fixture(scope="module")
def store(repo: Path) -> FeatureStore:
    return open_store(repo)


@pytest.fixture(scope="module")
def layout(store: FeatureStore, model_root: Path) -> StoreLayout:
    return load_package(model_root / "fraud_model" / "v1", store).layout


@pytest.fixture(scope="module")
def planted_stale(store: FeatureStore, layout: StoreLayout) -> str:
    """A card whose only row is older than card_features' TTL."""
    view = next(v for v in layout.views if v.name == "card_features")
    old = pd.Timestamp(clock.now() - timedelta(seconds=view.ttl_seconds + 86_400))
    row = {"card_id": STALE_CARD, "event_timestamp": old, "created_timestamp": old}
    row |= {feature: 1.0 for feature in view.features}
    frame = pd.DataFrame([row])
    for feature in store.get_feature_view("card_features").features:
        if feature.dtype.to_value_type().name in ("INT64", "INT32"):
            frame[feature.name] = frame[feature.name].astype("int64")
    store.write_to_online_store("card_features", frame)
    return STALE_CARD


def test_present_rows_are_feasts_values_in_model_order(
    store: FeatureStore, layout: StoreLayout, recent: pd.DataFrame
) -> None:
    rows = recent.tail(5)
    keys = {key: rows[key].tolist() for key in layout.join_keys}
    batch = FeastOnlineReader(store, layout).read(keys)  # type: ignore[arg-type]
    assert batch.values.shape == (5, layout.width) and batch.values.dtype == np.float32
    for view in layout.views:
        expected = store.get_online_features(
            features=[f"{view.name}:{f}" for f in view.features],
            entity_rows=[{view.join_key: k} for k in keys[view.join_key]],
        ).to_dict()
        block = batch.values[:, view.offset : view.offset + len(view.features)]
        for j, feature in enumerate(view.features):
            column = np.array([np.nan if v is None else v for v in expected[feature]], "f4")
            np.testing.assert_array_equal(block[:, j], column, err_msg=feature)
    for key in layout.join_keys:
        assert (batch.status[key] == PRESENT).all(), key
        assert (batch.age_seconds[key] >= 0).all(), key


def test_unknown_stale_and_absent_keys(
    store: FeatureStore, layout: StoreLayout, recent: pd.DataFrame, planted_stale: str
) -> None:
    row = recent.iloc[-1]
    keys: dict[str, list[str | None]] = {
        "ip_address": [row.ip_address, None, row.ip_address],
        "card_id": [planted_stale, "card_never_seen_by_feast", row.card_id],
        "merchant_id": [None, None, "m_never_seen_by_feast"],
    }
    batch = FeastOnlineReader(store, layout).read(keys)
    assert batch.status["ip_address"].tolist() == [PRESENT, NOT_REQUESTED, PRESENT]
    assert batch.status["card_id"].tolist() == [STALE, MISSING, PRESENT]
    assert batch.status["merchant_id"].tolist() == [NOT_REQUESTED, NOT_REQUESTED, MISSING]
    card = next(v for v in layout.views if v.name == "card_features")
    block = batch.values[:, card.offset : card.offset + len(card.features)]
    assert np.isnan(block[0]).all()  # stale: no value reaches the model
    assert np.isnan(block[1]).all()  # missing
    assert not np.isnan(block[2]).all()
    assert batch.age_seconds["card_id"][0] > card.ttl_seconds
    assert np.isnan(batch.age_seconds["card_id"][1])
    assert np.isnan(batch.age_seconds["merchant_id"][0])


def test_a_reachable_store_answers_the_readiness_probe(
    store: FeatureStore, layout: StoreLayout
) -> None:
    FeastOnlineReader(store, layout).ping()  # a real read of a key no store holds
    FeastOnlineReader(store, layout).close()  # Feast owns its connections: nothing to release


@pytest.mark.redis
def test_an_unreachable_store_is_feature_store_unavailable(
    redis_repo: Path, layout: StoreLayout
) -> None:
    yaml = redis_repo / "feature_store.features_unreachable.yaml"
    yaml.write_text(
        (redis_repo / "feature_store.redis.yaml")
        .read_text()
        .replace("${REDIS_CONNECTION_STRING}", f"127.0.0.1:{free_port()}")
    )
    reader = FeastOnlineReader(open_store(redis_repo, yaml), layout)
    keys: dict[str, list[str | None]] = {key: [None] for key in layout.join_keys}
    keys["card_id"] = ["card_1"]
    for attempt in (reader.ping, lambda: reader.read(keys)):
        with pytest.raises(FeatureStoreUnavailable) as refused:
            attempt()
        assert refused.value.message == (
            "The online feature store cannot be read right now; retry shortly."
        )
        assert (refused.value.status_code, refused.value.stage) == (503, "features")
        assert refused.value.__cause__ is not None  # the store's own error, kept for the log
