"""The layout of a FeatureService as a model reads it, from the live Feast registry.

Training records this layout in the model package; the scoring service reads it again at load
time and refuses a package that no longer matches; pipelines use it to check skew. One reader of
the registry for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from feast import FeatureStore

# Feature-view tag: "optional" when a missing row is no evidence that the entity is unknown
# (streaming windows of a quiet entity); see feature_repo.online.
EVIDENCE_TAG = "evidence"
# On-demand view tag: the `module:function` that computes it (feature_repo.transforms).
TRANSFORM_TAG = "transform"


@dataclass(frozen=True)
class ViewSpec:
    """A stored feature view as the model reads it."""

    join_key: str
    ttl_seconds: int | None
    features: list[str]
    evidence: bool = True  # a missing row of this view makes its entity unknown


@dataclass(frozen=True)
class OnDemandLayout:
    """An on-demand feature view of a FeatureService: what it needs and what it computes."""

    request_fields: list[str]  # fields of its request sources
    source_views: list[str]  # feature views it reads
    features: list[str]  # outputs the service selects, in model order
    function: str = ""  # `module:function` from the view's transform tag


@dataclass(frozen=True)
class FeatureLayout:
    """The feature views of a FeatureService, in the order the model reads them."""

    feature_service: str
    views: dict[str, ViewSpec]
    on_demand: dict[str, OnDemandLayout] = field(default_factory=dict)

    @property
    def stored_features(self) -> list[str]:
        """Stored feature names in model order."""
        return [f for view in self.views.values() for f in view.features]

    @property
    def on_demand_features(self) -> list[str]:
        """On-demand feature names in model order (after the stored ones)."""
        return [f for view in self.on_demand.values() for f in view.features]

    @property
    def request_fields(self) -> list[str]:
        """Request fields the on-demand views need (columns of the entity dataframe)."""
        return list(dict.fromkeys(f for v in self.on_demand.values() for f in v.request_fields))

    @property
    def join_keys(self) -> list[str]:
        """Join keys of the stored views, in model order, once each."""
        return list(dict.fromkeys(view.join_key for view in self.views.values()))


def open_store(repo_path: Path, yaml_path: Path | None = None) -> FeatureStore:
    """Open the Feast feature store of a repository (optionally with another yaml)."""
    if yaml_path is not None:
        return FeatureStore(repo_path=str(repo_path), fs_yaml_file=Path(yaml_path))
    return FeatureStore(repo_path=str(repo_path))


def feature_layout(store: FeatureStore, feature_service: str) -> FeatureLayout:
    """Read a FeatureService's views, join keys, TTLs and features from the registry."""
    service = store.get_feature_service(feature_service)
    views: dict[str, ViewSpec] = {}
    on_demand: dict[str, OnDemandLayout] = {}
    on_demand_names = {v.name for v in store.list_on_demand_feature_views(allow_cache=True)}
    for projection in service.feature_view_projections:
        if projection.name in on_demand_names:
            odfv = store.get_on_demand_feature_view(projection.name)
            on_demand[projection.name_to_use()] = OnDemandLayout(
                request_fields=[
                    f.name for source in odfv.source_request_sources.values() for f in source.schema
                ],
                source_views=sorted(p.name for p in odfv.source_feature_view_projections.values()),
                features=[feature.name for feature in projection.features],
                function=odfv.tags.get(TRANSFORM_TAG, ""),
            )
            continue
        view = store.get_feature_view(projection.name)
        join_keys = [column.name for column in view.entity_columns]
        if len(join_keys) != 1:
            raise ValueError(f"feature view {view.name} must have exactly one join key")
        views[projection.name_to_use()] = ViewSpec(
            join_key=join_keys[0],
            ttl_seconds=int(view.ttl.total_seconds()) if view.ttl else None,
            features=[feature.name for feature in projection.features],
            evidence=view.tags.get(EVIDENCE_TAG, "required") != "optional",
        )
    return FeatureLayout(feature_service=feature_service, views=views, on_demand=on_demand)
