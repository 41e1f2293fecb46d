"""The session's Redis store opened through Feast, its layout, and rows planted in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from feast import FeatureStore

from scoring_service.stages.features import StoreLayout
from tests.scoring_service.redis.parity import known_entities, plant_rows, store_layout

YAML = "feature_store.redis.yaml"


@pytest.fixture(scope="module")
def store(redis_repo: Path) -> FeatureStore:
    return FeatureStore(repo_path=str(redis_repo), fs_yaml_file=redis_repo / YAML)


@pytest.fixture(scope="module")
def layout(store: FeatureStore) -> StoreLayout:
    return store_layout(store)


@pytest.fixture(scope="module")
def planted(store: FeatureStore, layout: StoreLayout) -> dict[str, list[str]]:
    return plant_rows(store, layout)


@pytest.fixture(scope="module")
def known(redis_repo: Path) -> dict[str, list[str]]:
    return known_entities(redis_repo)
