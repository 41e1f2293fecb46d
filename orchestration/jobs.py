"""The jobs the schedules and sensors start: each a selection of the asset graph.

Every job that reads or writes the Feast repository carries the tag ``platform/feature-store``;
the run queue (infra/orchestration/dagster.yaml) runs one such job at a time, so an hourly
aggregation never rewrites the offline tables under a training run.
"""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from orchestration.assets import (
    batch_features,
    candidate_evaluation,
    candidate_package,
    candidate_rollout,
    feature_definitions,
    model_monitoring,
    nightly_scores,
    online_store,
    raw_events,
    training_set,
)

FEATURE_STORE_TAG = "platform/feature-store"
_TAGS = {FEATURE_STORE_TAG: "fraud"}

batch_features_job = define_asset_job(
    "batch_features_job",
    selection=AssetSelection.assets(raw_events, batch_features, online_store),
    description="Hourly: the raw events aggregated into batch features, then "
    "materialize-incremental into the online store.",
    tags=_TAGS,
)

feature_definitions_job = define_asset_job(
    "feature_definitions_job",
    selection=AssetSelection.assets(feature_definitions),
    description="`feast apply` of the domain's repository (after its definitions change).",
    tags=_TAGS,
)

monitoring_job = define_asset_job(
    "monitoring_job",
    selection=AssetSelection.assets(model_monitoring),
    description="Daily: delayed-label performance, drift and freshness; the retraining triggers.",
    tags=_TAGS,
)

retraining_job = define_asset_job(
    "retraining_job",
    selection=AssetSelection.assets(
        training_set, candidate_package, candidate_evaluation, candidate_rollout
    ),
    description="A candidate trained on the labels matured so far, stopped at the first gate "
    "it fails, then rolled out through the live service (shadow, canary, promotion) or rolled "
    "back; every gate, step and verdict goes to the decision log.",
    tags=_TAGS,
)

batch_scoring_job = define_asset_job(
    "batch_scoring_job",
    selection=AssetSelection.assets(nightly_scores),
    description="Nightly: the last day's objects scored offline by the champion into a dated "
    "table (the batch-prediction strategy).",
    tags=_TAGS,
)

JOBS = [
    batch_features_job,
    feature_definitions_job,
    monitoring_job,
    retraining_job,
    batch_scoring_job,
]
