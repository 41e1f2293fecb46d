"""Training: point-in-time training set -> LightGBM -> ONNX graphs -> versioned model package.

The split is by time (train, then validation, then holdout), as the model will meet the future,
not a shuffled past. Early stopping and label thresholds use the validation split; the holdout is
touched once, for the metrics written into the manifest: the model's, the rules baseline's and a
decision tree's on the same inputs and split. What is trained (label, entities, request
features, label vocabulary, threshold rule, uncertain policy) is the domain's declaration
(``feature_repo/<domain>/domain.yaml``); nothing here names a domain.

Why one module of this length: ``train`` is one pipeline, from the training set to the published
package, read top to bottom; its steps (split, parameters, manifest parts) are functions here.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from feature_repo import clock
from feature_repo.domain import DomainSpec, load_domain
from feature_repo.layout import TRANSFORM_TAG
from feature_repo.transforms import resolve
from models import evaluate, export
from models.dataset import (
    EVENT_TIMESTAMP,
    FeatureLayout,
    entity_dataframe,
    feature_layout,
    feature_matrix,
    load_events,
    open_store,
    retrieve_training_set,
)
from models.package import (
    FeatureViewInfo,
    GraphInfo,
    LabelThresholds,
    Manifest,
    OnDemandViewInfo,
    UncertainPolicy,
    feature_baseline,
    score_bins,
    sha256_bytes,
    write_package,
)
from models.reports import training as report
from models.reports.inputs import retriever, with_segment_columns
from models.reports.publish import with_report

logger = logging.getLogger(__name__)

CPU_GRAPH_FILE = "model.onnx"
GPU_GRAPH_FILE = "model.standard.onnx"
BOOSTER_FILE = "model.lgb.txt"
LIBRARIES = [
    "lightgbm",
    "onnx",
    "onnxruntime",
    "onnxmltools",
    "feast",
    "numpy",
    "pandas",
    "scikit-learn",
]


@dataclass
class TrainResult:
    """What one training run produced."""

    package_path: Path
    manifest: Manifest

    def summary(self) -> str:
        """Human-readable summary of the run's holdout metrics."""
        m = self.manifest
        hold = m.metrics["holdout"]
        valid = m.metrics["validation"]
        thresholds = "  ".join(
            f"{label} >= {value:.4f}" for label, value in m.label_thresholds.cutoffs.items()
        )
        return "\n".join(
            [
                f"model package   {m.name}/{m.version} -> {self.package_path}",
                f"feature service {m.feature_service} ({len(m.features)} inputs)",
                f"rows            train {m.training['n_train']}  validation {valid['n_rows']}"
                f"  holdout {hold['n_rows']}  (holdout {m.training['label_column']} rate "
                f"{hold['positive_rate']:.4f})",
                "holdout                 ROC-AUC   PR-AUC",
                f"  LightGBM              {hold['roc_auc']:.4f}   {hold['pr_auc']:.4f}",
                f"  decision tree         {hold['decision_tree_roc_auc']:.4f}   "
                f"{hold['decision_tree_pr_auc']:.4f}",
                f"  rules baseline        {hold['rules_baseline_roc_auc']:.4f}   "
                f"{hold['rules_baseline_pr_auc']:.4f}",
                f"thresholds      {thresholds}",
                f"ONNX parity     max |diff| cpu {m.training['parity_cpu']:.2e}  "
                f"gpu graph {m.training['parity_gpu']:.2e}",
            ]
        )


def compare_summary(results: list[TrainResult]) -> str:
    """Holdout metrics of several versions side by side (they share one time split)."""
    names = [r.manifest.feature_service for r in results]
    width = max(16, *(len(n) + 2 for n in names))

    def row(label: str, values: list[str]) -> str:
        return f"{label:<24}" + "".join(f"{v:>{width}}" for v in values)

    def metric(key: str) -> list[str]:
        return [f"{r.manifest.metrics['holdout'][key]:.4f}" for r in results]

    lines = [
        row("", names),
        row("inputs", [str(len(r.manifest.features)) for r in results]),
        row("holdout rows", [str(r.manifest.metrics["holdout"]["n_rows"]) for r in results]),
        row("holdout positive rate", metric("positive_rate")),
        row("holdout ROC-AUC", metric("roc_auc")),
        row("holdout PR-AUC", metric("pr_auc")),
        row("decision tree ROC-AUC", metric("decision_tree_roc_auc")),
        row("decision tree PR-AUC", metric("decision_tree_pr_auc")),
        row("rules baseline PR-AUC", metric("rules_baseline_pr_auc")),
        row("package", [f"{r.manifest.name}/{r.manifest.version}" for r in results]),
    ]
    splits = {
        (r.manifest.training["validation_from"], r.manifest.training["holdout_from"])
        for r in results
    }
    if len(splits) == 1:
        valid_from, hold_from = next(iter(splits))
        lines.append(f"same time split: validation from {valid_from}, holdout from {hold_from}")
    else:
        lines.append(f"WARNING: the versions were split differently: {sorted(splits)}")
    return "\n".join(lines)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the package."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def split_by_time(
    frame: pd.DataFrame, valid_share: float, holdout_share: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / validation / holdout by event time quantiles (no shuffling)."""
    times = frame[EVENT_TIMESTAMP]
    t_valid = times.quantile(1.0 - valid_share - holdout_share)
    t_hold = times.quantile(1.0 - holdout_share)
    train = frame[times < t_valid]
    valid = frame[(times >= t_valid) & (times < t_hold)]
    holdout = frame[times >= t_hold]
    return train, valid, holdout


def default_params(seed: int) -> dict[str, object]:
    """LightGBM parameters: modest trees, deterministic, two threads."""
    return {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 40,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "metric": ["average_precision", "auc"],
        "seed": seed,
        "deterministic": True,
        "num_threads": 2,
        "verbose": -1,
    }


def on_demand_info(layout: FeatureLayout) -> dict[str, OnDemandViewInfo]:
    """Manifest entries of the layout's on-demand views, naming the code that computes them."""
    out = {}
    for view, info in layout.on_demand.items():
        try:
            transform = resolve(info.function)
        except ValueError as exc:
            raise ValueError(
                f"on-demand view {view} does not name a declared transform in its "
                f"`{TRANSFORM_TAG}` tag ({exc}); the service could not compute it"
            ) from exc
        out[view] = OnDemandViewInfo(
            request_fields=info.request_fields,
            source_views=info.source_views,
            stored_inputs=list(transform.stored_inputs),
            features=info.features,
            function=transform.reference,
            code_sha256=transform.code_sha256,
        )
    return out


def uncertain_policy(spec: DomainSpec) -> UncertainPolicy:
    """The package's uncertain policy, as the domain declares it."""
    declared = spec.uncertain
    return UncertainPolicy(
        max_unknown_entities=declared.max_unknown_entities,
        required_entities=declared.required_entities,
        optional_entities=declared.optional_entities,
        stale_counts_as_unknown=declared.stale_counts_as_unknown,
        report_label_at_or_above=spec.report_floor,
    )


def train(
    repo_path: Path,
    events_path: Path | None,
    output_root: Path,
    feature_service: str | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    yaml_path: Path | None = None,
    num_boost_round: int = 400,
    valid_share: float = 0.15,
    holdout_share: float = 0.15,
    seed: int = 7,
    domain: DomainSpec | None = None,
) -> TrainResult:
    """Train, export, check and publish one model version.

    ``domain`` defaults to the ``domain.yaml`` of the Feast repository; it also supplies the
    defaults of ``events_path`` (its training data), ``feature_service`` and ``model_name``.
    """
    spec = domain or load_domain(repo_path)
    events_path = events_path or spec.training_data_path
    feature_service = feature_service or spec.feature_service
    model_name = model_name or spec.model_name
    model_version = model_version or feature_service.rsplit("_", 1)[-1]
    label = spec.label_column
    store = open_store(repo_path, yaml_path)
    layout = feature_layout(store, feature_service)
    features = layout.stored_features + layout.on_demand_features + spec.request_features
    on_demand_views = on_demand_info(layout)

    events = load_events(events_path, spec)
    frame = retrieve_training_set(
        store,
        feature_service,
        entity_dataframe(events, spec, request_fields=layout.request_fields),
        spec,
    )
    train_df, valid_df, hold_df = split_by_time(frame, valid_share, holdout_share)
    if min(len(train_df), len(valid_df), len(hold_df)) == 0:
        raise ValueError("not enough rows to split into train, validation and holdout")
    for name, part in (("train", train_df), ("validation", valid_df), ("holdout", hold_df)):
        if part[label].nunique() < 2:
            raise ValueError(f"the {name} split has a single class; generate more rows")

    x_train, x_valid, x_hold = (feature_matrix(p, features) for p in (train_df, valid_df, hold_df))
    y_train, y_valid, y_hold = (
        p[label].to_numpy(dtype=np.int32) for p in (train_df, valid_df, hold_df)
    )
    # LightGBM sees the float32 values the graphs will see, so thresholds fall between them.
    train_set = lgb.Dataset(
        x_train.astype(np.float64), y_train, feature_name=features, free_raw_data=False
    )
    valid_set = lgb.Dataset(x_valid.astype(np.float64), y_valid, reference=train_set)
    params = default_params(seed)
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(50, first_metric_only=True, verbose=False)],
    )
    # Keep exactly the trees we evaluate and export.
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))

    valid_scores = np.asarray(booster.predict(x_valid.astype(np.float64)), dtype=np.float64)
    hold_scores = np.asarray(booster.predict(x_hold.astype(np.float64)), dtype=np.float64)
    thresholds = evaluate.choose_thresholds(y_valid, valid_scores, spec.threshold_rule)
    rules = evaluate.ranking_metrics(y_hold, evaluate.rules_baseline(hold_df, spec.reasons))
    # The same inputs and split, one tree: what LightGBM must beat to be worth its keep.
    tree = evaluate.ranking_metrics(
        y_hold, evaluate.decision_tree_baseline(x_train, y_train, x_hold, seed)
    )

    metrics = {
        "validation": {
            "n_rows": len(valid_df),
            "positive_rate": float(y_valid.mean()),
            **evaluate.ranking_metrics(y_valid, valid_scores),
        },
        "holdout": {
            "n_rows": len(hold_df),
            "positive_rate": float(y_hold.mean()),
            **evaluate.ranking_metrics(y_hold, hold_scores),
            "decision_tree_roc_auc": tree["roc_auc"],
            "decision_tree_pr_auc": tree["pr_auc"],
            "rules_baseline_roc_auc": rules["roc_auc"],
            "rules_baseline_pr_auc": rules["pr_auc"],
            **evaluate.label_counts(hold_scores, y_hold, thresholds),
        },
    }

    cpu_graph = export.tree_ensemble_graph(booster, len(features))
    gpu_graph = export.standard_ops_graph(booster)
    planted = export.with_planted_nans(x_hold, seed=seed)
    parity_cpu = max(
        export.check_parity(booster, cpu_graph, x_hold, "cpu graph, holdout"),
        export.check_parity(booster, cpu_graph, planted, "cpu graph, planted NaNs"),
    )
    parity_gpu = max(
        export.check_parity(booster, gpu_graph, x_hold, "gpu graph, holdout"),
        export.check_parity(booster, gpu_graph, planted, "gpu graph, planted NaNs"),
    )

    files = {
        CPU_GRAPH_FILE: cpu_graph.SerializeToString(),
        GPU_GRAPH_FILE: gpu_graph.SerializeToString(),
        BOOSTER_FILE: booster.model_to_string().encode(),
    }
    times = frame[EVENT_TIMESTAMP]
    manifest = Manifest(
        name=model_name,
        version=model_version,
        created_at=clock.now(),
        domain=spec.name,
        labels=spec.labels,
        uncertain_label=spec.uncertain_label,
        feature_service=feature_service,
        features=features,
        feature_views={
            view: FeatureViewInfo(
                join_key=spec.join_key,
                ttl_seconds=spec.ttl_seconds,
                features=spec.features,
                evidence=spec.evidence,
            )
            for view, spec in layout.views.items()
        },
        on_demand_views=on_demand_views,
        request_features=spec.request_features,
        entity_mapping=spec.entity_mapping,
        label_thresholds=LabelThresholds(**thresholds, rule=spec.threshold_rule.describe()),
        uncertain_policy=uncertain_policy(spec),
        graphs={
            "cpu": GraphInfo(
                file=CPU_GRAPH_FILE,
                sha256=sha256_bytes(files[CPU_GRAPH_FILE]),
                kind="tree_ensemble",
            ),
            "gpu": GraphInfo(
                file=GPU_GRAPH_FILE,
                sha256=sha256_bytes(files[GPU_GRAPH_FILE]),
                kind="standard_ops",
            ),
        },
        artefacts={BOOSTER_FILE: sha256_bytes(files[BOOSTER_FILE])},
        metrics=metrics,
        baseline_score_distribution=evaluate.score_quantiles(hold_scores),
        baseline_score_bins=score_bins(hold_scores),
        # Drift references for serving and monitoring: the data the trees were fitted on.
        feature_baselines={
            name: feature_baseline(x_train[:, j]) for j, name in enumerate(features)
        },
        training={
            "events": str(events_path),
            "domain_file": str(spec.folder) if spec.folder else "",
            "label_column": label,
            "business_id": spec.business_id,
            "data_range": [str(times.min()), str(times.max())],
            "validation_from": str(valid_df[EVENT_TIMESTAMP].min()),
            "holdout_from": str(hold_df[EVENT_TIMESTAMP].min()),
            "n_train": len(train_df),
            "num_trees": booster.num_trees(),
            "best_iteration": int(booster.best_iteration or booster.num_trees()),
            "params": {k: v for k, v in params.items() if k != "metric"},
            "parity_cpu": parity_cpu,
            "parity_gpu": parity_gpu,
            "parity_tolerance": export.PARITY_TOLERANCE,
        },
        library_versions=library_versions(),
    )
    report_data = report.build(
        manifest,
        with_segment_columns(hold_df, events, spec),
        booster,
        spec=spec,
        root=output_root,
        retrieve=retriever(store, events, spec),
    )
    manifest, files[report.REPORT_FILE] = with_report(manifest, report.render(report_data))
    path = write_package(output_root, manifest, files)
    return TrainResult(package_path=path, manifest=manifest)
