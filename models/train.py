"""Training: point-in-time training set -> LightGBM -> ONNX graphs -> versioned model package.

The split is by time (train, then validation, then holdout), as the model will meet the future,
not a shuffled past. Early stopping and label thresholds use the validation split; the holdout is
touched once, for the metrics written into the manifest.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from feature_repo.layout import TRANSFORM_TAG
from feature_repo.transforms import resolve
from models import evaluate, export, report
from models.dataset import (
    ENTITY_MAPPING,
    LABEL_COLUMN,
    REQUEST_FEATURES,
    FeatureLayout,
    entity_dataframe,
    feature_layout,
    feature_matrix,
    load_transactions,
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
    sha256_bytes,
    write_package,
)

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
        return "\n".join(
            [
                f"model package   {m.name}/{m.version} -> {self.package_path}",
                f"feature service {m.feature_service} ({len(m.features)} inputs)",
                f"rows            train {m.training['n_train']}  validation {valid['n_rows']}"
                f"  holdout {hold['n_rows']}  (holdout fraud rate {hold['fraud_rate']:.4f})",
                f"holdout ROC-AUC {hold['roc_auc']:.4f}",
                f"holdout PR-AUC  {hold['pr_auc']:.4f}   rules baseline PR-AUC "
                f"{hold['rules_baseline_pr_auc']:.4f}",
                f"thresholds      suspicious >= {m.label_thresholds.suspicious:.4f}  "
                f"highly_suspicious >= {m.label_thresholds.highly_suspicious:.4f}",
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
        row("holdout fraud rate", metric("fraud_rate")),
        row("holdout ROC-AUC", metric("roc_auc")),
        row("holdout PR-AUC", metric("pr_auc")),
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
    times = frame["event_timestamp"]
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


def train(
    repo_path: Path,
    transactions_path: Path,
    output_root: Path,
    feature_service: str = "fraud_model_v1",
    model_name: str = "fraud_model",
    model_version: str | None = None,
    yaml_path: Path | None = None,
    num_boost_round: int = 400,
    valid_share: float = 0.15,
    holdout_share: float = 0.15,
    seed: int = 7,
) -> TrainResult:
    """Train, export, check and publish one model version."""
    model_version = model_version or feature_service.rsplit("_", 1)[-1]
    store = open_store(repo_path, yaml_path)
    layout = feature_layout(store, feature_service)
    features = layout.stored_features + layout.on_demand_features + REQUEST_FEATURES
    on_demand_views = on_demand_info(layout)

    transactions = load_transactions(transactions_path)
    frame = retrieve_training_set(
        store,
        feature_service,
        entity_dataframe(transactions, request_fields=layout.request_fields),
    )
    train_df, valid_df, hold_df = split_by_time(frame, valid_share, holdout_share)
    if min(len(train_df), len(valid_df), len(hold_df)) == 0:
        raise ValueError("not enough rows to split into train, validation and holdout")
    for name, part in (("train", train_df), ("validation", valid_df), ("holdout", hold_df)):
        if part[LABEL_COLUMN].nunique() < 2:
            raise ValueError(f"the {name} split has a single class; generate more rows")

    x_train, x_valid, x_hold = (feature_matrix(p, features) for p in (train_df, valid_df, hold_df))
    y_train, y_valid, y_hold = (
        p[LABEL_COLUMN].to_numpy(dtype=np.int32) for p in (train_df, valid_df, hold_df)
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
    thresholds = evaluate.choose_thresholds(y_valid, valid_scores)

    metrics = {
        "validation": {
            "n_rows": len(valid_df),
            "fraud_rate": float(y_valid.mean()),
            **evaluate.ranking_metrics(y_valid, valid_scores),
        },
        "holdout": {
            "n_rows": len(hold_df),
            "fraud_rate": float(y_hold.mean()),
            **evaluate.ranking_metrics(y_hold, hold_scores),
            "rules_baseline_pr_auc": evaluate.ranking_metrics(
                y_hold, evaluate.rules_baseline(hold_df)
            )["pr_auc"],
            "rules_baseline_roc_auc": evaluate.ranking_metrics(
                y_hold, evaluate.rules_baseline(hold_df)
            )["roc_auc"],
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
    times = frame["event_timestamp"]
    manifest = Manifest(
        name=model_name,
        version=model_version,
        created_at=datetime.now(UTC),
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
        request_features=REQUEST_FEATURES,
        entity_mapping=ENTITY_MAPPING,
        label_thresholds=LabelThresholds(**thresholds, rule=evaluate.THRESHOLD_RULE),
        uncertain_policy=UncertainPolicy(),
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
        # Drift references for serving and monitoring: the data the trees were fitted on.
        feature_baselines={
            name: feature_baseline(x_train[:, j]) for j, name in enumerate(features)
        },
        training={
            "transactions": str(transactions_path),
            "data_range": [str(times.min()), str(times.max())],
            "validation_from": str(valid_df["event_timestamp"].min()),
            "holdout_from": str(hold_df["event_timestamp"].min()),
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
        report.with_segment_columns(hold_df, transactions),
        booster,
        label_column=LABEL_COLUMN,
        root=output_root,
        retrieve=report.retriever(store, transactions),
    )
    manifest, files[report.REPORT_FILE] = report.with_report(
        manifest, report.render(report_data)
    )
    path = write_package(output_root, manifest, files)
    return TrainResult(package_path=path, manifest=manifest)
