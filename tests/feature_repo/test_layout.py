"""The layout of a FeatureService as a model reads it from the registry: views in service order,
each with its one join key, TTL, selected features and evidence tag; on-demand views with their
request fields, source views and transform; the fraud services as training records them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from feast import (
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    Field,
    FileSource,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

from feature_pipelines.fraud import schema
from feature_pipelines.fraud.windows import CATALOGUE
from feature_repo.layout import (
    FeatureLayout,
    OnDemandLayout,
    ViewSpec,
    feature_layout,
    open_store,
)

YAML = """project: {project}
provider: local
registry: data/registry.db
online_store:
  type: sqlite
  path: data/online.db
offline_store:
  type: duckdb
entity_key_serialization_version: 3
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    """A registry of planted definitions: views with and without TTL and evidence, a view with
    two join keys, two on-demand views sharing a request field, services selecting from them."""
    repo = tmp_path_factory.mktemp("layout")
    (repo / "feature_store.yaml").write_text(YAML.format(project="layout_test"))
    card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.STRING)
    shop = Entity(name="shop", join_keys=["shop_id"], value_type=ValueType.STRING)
    source = FileSource(name="s", path=str(repo / "s.parquet"), timestamp_field="event_timestamp")
    card_view = FeatureView(
        name="card_view",
        entities=[card],
        ttl=timedelta(hours=2),
        schema=[Field(name=n, dtype=Float64) for n in ("a", "b", "c")],
        source=source,
    )
    quiet_view = FeatureView(
        name="quiet_view",
        entities=[card],
        ttl=timedelta(0),
        schema=[Field(name="d", dtype=Int64)],
        source=source,
        tags={"evidence": "optional"},
    )
    shop_view = FeatureView(
        name="shop_view",
        entities=[shop],
        ttl=timedelta(days=1),
        schema=[Field(name="e", dtype=Int64)],
        source=source,
        tags={"evidence": "required"},
    )
    pair_view = FeatureView(
        name="pair_view",
        entities=[card, shop],
        ttl=timedelta(days=1),
        schema=[Field(name="f", dtype=Int64)],
        source=source,
    )
    payment = RequestSource(
        name="payment",
        schema=[Field(name="amount", dtype=Float64), Field(name="country", dtype=String)],
    )
    channel = RequestSource(name="channel", schema=[Field(name="amount", dtype=Float64)])

    @on_demand_feature_view(
        sources=[card_view, shop_view, payment],
        schema=[Field(name="ratio", dtype=Float64), Field(name="twice", dtype=Float64)],
        mode="python",
        tags={"transform": "pkg.mod:ratios"},
    )
    def ratios(inputs: dict) -> dict:
        return {"ratio": [1.0 for _ in inputs["amount"]], "twice": [2.0 for _ in inputs["amount"]]}

    @on_demand_feature_view(
        sources=[channel], schema=[Field(name="half", dtype=Float64)], mode="python"
    )
    def untagged(inputs: dict) -> dict:
        return {"half": [0.5 for _ in inputs["amount"]]}

    service = FeatureService(
        name="model_v1",
        features=[
            quiet_view,
            card_view[["c", "a"]],
            shop_view,
            card_view.with_name("card_again")[["b"]],
            ratios[["twice"]],
            untagged,
        ],
    )
    requests_only = FeatureService(name="requests_only", features=[untagged])
    two_keys = FeatureService(name="two_keys", features=[pair_view])
    opened = FeatureStore(repo_path=str(repo))
    views = [card_view, quiet_view, shop_view, pair_view, ratios, untagged]
    opened.apply([card, shop, source, payment, channel, *views, service, requests_only, two_keys])
    return opened


def test_views_come_in_service_order_with_what_the_model_reads(store: FeatureStore) -> None:
    layout = feature_layout(store, "model_v1")
    assert layout == FeatureLayout(
        feature_service="model_v1",
        views={
            "quiet_view": ViewSpec("card_id", None, ["d"], evidence=False),
            "card_view": ViewSpec("card_id", 7200, ["c", "a"], evidence=True),
            "shop_view": ViewSpec("shop_id", 86400, ["e"], evidence=True),
            "card_again": ViewSpec("card_id", 7200, ["b"], evidence=True),
        },
        on_demand={
            "ratios": OnDemandLayout(
                request_fields=["amount", "country"],
                source_views=["card_view", "shop_view"],
                features=["twice"],
                function="pkg.mod:ratios",
            ),
            "untagged": OnDemandLayout(["amount"], [], ["half"], function=""),
        },
    )
    assert list(layout.views) == ["quiet_view", "card_view", "shop_view", "card_again"]


def test_the_model_input_order_follows_the_layout(store: FeatureStore) -> None:
    layout = feature_layout(store, "model_v1")
    assert layout.stored_features == ["d", "c", "a", "e", "b"]
    assert layout.on_demand_features == ["twice", "half"]
    assert layout.request_fields == ["amount", "country"]  # once each
    assert layout.join_keys == ["card_id", "shop_id"]


def test_a_service_of_request_features_only_reads_no_entity(store: FeatureStore) -> None:
    layout = feature_layout(store, "requests_only")
    assert (layout.views, layout.join_keys, layout.stored_features) == ({}, [], [])
    assert layout.on_demand_features == ["half"]


def test_a_view_keyed_by_two_entities_is_refused(store: FeatureStore) -> None:
    with pytest.raises(ValueError, match="feature view pair_view must have exactly one join key"):
        feature_layout(store, "two_keys")


def test_open_store_reads_the_yaml_it_is_given(tmp_path: Path) -> None:
    (tmp_path / "feature_store.yaml").write_text(YAML.format(project="default_yaml"))
    (tmp_path / "other.yaml").write_text(YAML.format(project="other_yaml"))
    assert open_store(tmp_path).project == "default_yaml"
    assert open_store(tmp_path, tmp_path / "other.yaml").project == "other_yaml"


# --- the fraud services, from the repository applied with `feast apply` ---------------------

TTL = {"ip_features": 14, "card_features": 30, "merchant_features": 7}  # days


def batch_view(entity: str) -> tuple[str, ViewSpec]:
    name = f"{entity}_features"
    key = schema.ENTITY_JOIN_KEYS[entity]
    return name, ViewSpec(key, TTL[name] * 86400, schema.ENTITY_FEATURES[entity])


def stream_view(kind: str) -> tuple[str, ViewSpec]:
    spec = CATALOGUE.kind(kind)
    return spec.view, ViewSpec(spec.join_key, 3600, spec.feature_names, evidence=False)


REQUEST = ["amount", "card_country", "ip_country", "merchant_country"]
GEO = OnDemandLayout(
    REQUEST,
    [],
    ["ip_country_mismatch", "merchant_country_mismatch"],
    "feature_repo.fraud.transforms:geo_context",
)


def test_fraud_model_v1_reads_the_batch_views(planted_repo: Path) -> None:
    layout = feature_layout(open_store(planted_repo), "fraud_model_v1")
    assert layout.views == dict(batch_view(e) for e in ("ip", "card", "merchant"))
    assert layout.on_demand == {}
    assert layout.join_keys == ["ip_address", "card_id", "merchant_id"]


def test_fraud_model_v2_adds_stream_windows_and_request_features(planted_repo: Path) -> None:
    layout = feature_layout(open_store(planted_repo), "fraud_model_v2")
    batch = [batch_view(e) for e in ("ip", "card", "merchant")]
    assert layout.views == dict([stream_view("ip"), stream_view("card"), *batch])
    assert layout.on_demand == {
        "amount_context": OnDemandLayout(
            REQUEST,
            ["card_features", "card_stream_features", "ip_features"],
            [
                "amount_to_card_mean_30d",
                "amount_to_card_max_30d",
                "amount_to_ip_mean_7d",
                "amount_to_card_mean_1h",
            ],
            "feature_repo.fraud.transforms:amount_context",
        ),
        "geo_context": GEO,
    }
    assert layout.request_fields == REQUEST
    assert layout.join_keys == ["ip_address", "card_id", "merchant_id"]


def test_the_fallback_service_reads_nothing_stored(planted_repo: Path) -> None:
    layout = feature_layout(open_store(planted_repo), "fraud_model_rt")
    assert layout == FeatureLayout("fraud_model_rt", views={}, on_demand={"geo_context": GEO})
