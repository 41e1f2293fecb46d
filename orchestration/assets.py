"""The platform's assets: raw events -> batch features -> online store; training set -> candidate
package -> evaluation; and delayed-label monitoring.

Each asset drives the other packages through their public functions (``feature_pipelines``'
aggregate, replay and materialize, ``models.train.train``, ``models.monitor.monitor``) and the
plain Feast CLI (``feast apply``), exactly as their command lines do. Files stay where the
platform keeps them (the Feast repository's ``data/``, ``models/packages``); what only the
orchestration writes (training sets, evaluations, the decision log) lives under
``PlatformResource.work_dir``.

Why one module of this length: the asset graph is read as one picture (the UI draws it from
these definitions); each asset is a short adapter over a public function, and splitting them
across files would scatter the lineage a reader follows from raw events to an evaluated
candidate.
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import (
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from feature_repo import clock
from feature_repo.domain import DomainSpec, load_domain
from orchestration import checks
from orchestration.decisions import Decision, DecisionLog, RunInfo, as_metadata, run_info
from orchestration.resources import PlatformResource

FEATURES = "features"
TRAINING = "training"
MONITORING = "monitoring"
ROLLOUT = "rollout"
BATCH = "batch"
TRAINING_SET_DIR = "training_set"
TRAINING_FILE = "training.parquet"
EVALUATION_FILE = "evaluation.parquet"
TRAINING_SET_RECORD = "training_set.json"
CANDIDATE_RECORD = "candidate.json"
EVALUATION_RECORD = "evaluation.json"


# --- shared steps ---------------------------------------------------------------------------


def _run(context: AssetExecutionContext, platform: PlatformResource) -> tuple[DecisionLog, RunInfo]:
    """The decision log and this run's identity; the run's own record on its first step."""
    log = DecisionLog(platform.decision_log_path)
    dagster_run = context.run
    run = run_info(dagster_run.run_id, dagster_run.job_name, dagster_run.tags)
    selection = sorted(key.to_user_string() for key in (dagster_run.asset_selection or ()))
    log.record_run_once(
        run,
        message=f"run of {dagster_run.job_name} ({run.trigger}; started by {run.started_by})",
        evidence={"assets": selection, "champion": platform.live_champion or None},
    )
    return log, run


def _decisions(records: list[Decision], log: DecisionLog) -> dict[str, Any]:
    """The records a step appended, as metadata shown in the UI."""
    return {
        "decisions": MetadataValue.json(as_metadata(records)),
        "decision_log": MetadataValue.path(str(log.path)),
    }


def _domain(platform: PlatformResource) -> DomainSpec:
    return load_domain(platform.repo)


def _store(platform: PlatformResource):  # type: ignore[no-untyped-def]
    from models.dataset import open_store

    return open_store(platform.repo, platform.store_yaml)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _read_json(path: Path, produced_by: str) -> dict[str, Any]:
    if not path.is_file():
        raise Failure(f"{path} is missing: materialize {produced_by} first")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


# --- features -------------------------------------------------------------------------------


@asset(
    group_name=FEATURES,
    description="The labelled raw events (transactions with is_fraud and label_available_at) "
    "that features and training sets come from; written by the event feed "
    "(`python -m feature_pipelines generate` in the embedded default).",
)
def raw_events(context: AssetExecutionContext, platform: PlatformResource) -> MaterializeResult:
    _run(context, platform)
    spec = _domain(platform)
    path = platform.path(platform.transactions)
    if not path.is_file():
        raise Failure(
            f"no raw events at {path}: run `make data` "
            "(or point ORCHESTRATION_TRANSACTIONS at them)"
        )
    frame = pd.read_parquet(
        path, columns=[spec.timestamp_field, spec.label_column, "label_available_at"]
    )
    times = pd.to_datetime(frame[spec.timestamp_field], utc=True)
    matured = pd.to_datetime(frame["label_available_at"], utc=True) <= pd.Timestamp(clock.now())
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(path)),
            "rows": len(frame),
            "first_event": str(times.min()),
            "last_event": str(times.max()),
            "positive_rate": float(frame[spec.label_column].mean()),
            "labels_matured_now": float(matured.mean()),
        }
    )


@asset(
    group_name=FEATURES,
    deps=[raw_events],
    description="Hourly entity snapshots (aggregate) and the streaming views' rows (replay) in "
    "the Feast repository's offline store, as `python -m feature_pipelines aggregate` and "
    "`replay` write them.",
)
def batch_features(context: AssetExecutionContext, platform: PlatformResource) -> MaterializeResult:
    _run(context, platform)
    spec = _domain(platform)
    if spec.name != "fraud":
        raise Failure(
            f"domain {spec.name} has no hourly feature pipeline; its features are loaded once"
        )
    from feature_pipelines.fraud import schema
    from feature_pipelines.fraud.aggregate import aggregate
    from feature_pipelines.fraud.windows import CATALOGUE
    from feature_pipelines.streaming.replay import stream_tables, write_stream_tables
    from feature_pipelines.tables import write_feature_tables

    started = time.perf_counter()
    frame = pd.read_parquet(platform.path(platform.transactions))
    out_dir = platform.repo / "data"
    tables = aggregate(frame)
    written = write_feature_tables(tables, out_dir, schema.TABLE_FILES)
    stream = stream_tables(CATALOGUE, frame.sort_values(schema.EVENT_TIMESTAMP, kind="stable"))
    written += write_stream_tables(CATALOGUE, stream, out_dir)
    return MaterializeResult(
        metadata={
            "tables": MetadataValue.json([str(p) for p in written]),
            "snapshot_rows": MetadataValue.json(
                {name: len(t) for name, t in {**tables, **stream}.items()}
            ),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


@asset(
    group_name=FEATURES,
    description="The Feast registry: `feast apply` of the domain's repository, unchanged.",
)
def feature_definitions(
    context: AssetExecutionContext, platform: PlatformResource
) -> MaterializeResult:
    _run(context, platform)
    feast = Path(sys.executable).parent / "feast"
    yaml = str(platform.store_yaml) if platform.store_yaml else "feature_store.yaml"
    result = subprocess.run(
        [str(feast), "-f", yaml, "apply"],
        cwd=platform.repo,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise Failure(
            "feast apply failed",
            metadata={"output": MetadataValue.md(f"```\n{result.stdout}\n{result.stderr}\n```")},
        )
    store = _store(platform)
    return MaterializeResult(
        metadata={
            "feature_services": MetadataValue.json(
                sorted(s.name for s in store.list_feature_services())
            ),
            "feature_views": MetadataValue.json(sorted(v.name for v in store.list_feature_views())),
        }
    )


@asset(
    group_name=FEATURES,
    deps=[batch_features, feature_definitions],
    description="The online store: `materialize-incremental` up to now "
    "(feature_pipelines.materialize), what the scoring service reads.",
)
def online_store(context: AssetExecutionContext, platform: PlatformResource) -> MaterializeResult:
    _run(context, platform)
    from feature_pipelines.materialize import materialize
    from orchestration.triggers import view_ages

    started = time.perf_counter()
    until = materialize(platform.repo, end=clock.now(), yaml_path=platform.store_yaml)
    ages = view_ages(_store(platform), clock.now())
    return MaterializeResult(
        metadata={
            "materialized_until": until.isoformat(),
            "view_age_hours": MetadataValue.json(ages),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )


# --- training -------------------------------------------------------------------------------


@asset(
    group_name=TRAINING,
    deps=[batch_features, feature_definitions],
    description="Labelled events as known at training time: matured labels only, split into "
    "the training events and the most recent window that judges the candidate. Features are "
    "joined point-in-time through the FeatureService when training and evaluating.",
)
def training_set(context: AssetExecutionContext, platform: PlatformResource) -> MaterializeResult:
    log, run = _run(context, platform)
    from models.dataset import load_events
    from orchestration.evaluation import matured_split

    spec = _domain(platform)
    events = load_events(platform.path(platform.transactions), spec)
    split = matured_split(events, spec, clock.now(), platform.gates.evaluation_days)
    if split.training.empty or split.evaluation.empty:
        raise Failure(f"not enough matured labels to train and evaluate: {split.summary()}")
    folder = platform.work / TRAINING_SET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    split.training.to_parquet(folder / TRAINING_FILE, index=False)
    split.evaluation.to_parquet(folder / EVALUATION_FILE, index=False)
    label = spec.label_column
    record = {
        **split.summary(),
        "run_id": run.run_id,
        "training_positive_rate": float(split.training[label].mean()),
        "evaluation_positive_rate": float(split.evaluation[label].mean()),
    }
    _write_json(folder / TRAINING_SET_RECORD, record)
    return MaterializeResult(
        metadata={**record, "folder": MetadataValue.path(str(folder)), **_decisions([], log)}
    )


@asset(
    group_name=TRAINING,
    deps=[training_set],
    check_specs=checks.specs("candidate_package", checks.PACKAGE_GATES),
    description="A candidate model package trained by models.train.train on the training "
    "events (LightGBM, ONNX export with its parity check, sealed), next to the champion's "
    "versions under the model root.",
)
def candidate_package(context: AssetExecutionContext, platform: PlatformResource):  # type: ignore[no-untyped-def]
    log, run = _run(context, platform)
    from models.dataset import feature_layout
    from models.package import package_dir, read_manifest
    from models.train import train

    spec = _domain(platform)
    folder = platform.work / TRAINING_SET_DIR
    trained = _read_json(folder / TRAINING_SET_RECORD, "training_set")
    champion = _champion(platform)
    service = platform.feature_service or (
        champion[1].feature_service if champion else spec.feature_service
    )
    as_of = pd.Timestamp(trained["as_of"])
    # Unique per run: a rerun on the same training set never replaces a package already judged.
    version = f"r{as_of:%Y%m%d%H%M%S}-{run.run_id[:8]}"
    target = package_dir(platform.path(platform.model_root), spec.model_name, version)
    if target.exists():
        raise Failure(f"{target} exists already; a package is never replaced")
    started = time.perf_counter()
    result = train(
        repo_path=platform.repo,
        events_path=folder / TRAINING_FILE,
        output_root=platform.path(platform.model_root),
        feature_service=service,
        model_version=version,
        yaml_path=platform.store_yaml,
        num_boost_round=platform.training_rounds,
        seed=platform.seed,
        domain=spec,
    )
    manifest = read_manifest(result.package_path)
    name = f"{manifest.name}/{manifest.version}"
    store = _store(platform)
    gates = [
        checks.parity_gate(manifest),
        checks.features_gate(manifest, feature_layout(store, manifest.feature_service)),
        checks.seal_gate(package_dir(platform.path(platform.model_root), manifest.name, version)),
    ]
    records = checks.record(
        log,
        run,
        gates,
        stage="package",
        candidate=name,
        champion=platform.live_champion or None,
        last_stage=False,
    )
    _write_json(
        platform.work / CANDIDATE_RECORD,
        {"package": name, "path": str(result.package_path), "run_id": run.run_id, **trained},
    )
    holdout = manifest.metrics["holdout"]
    yield MaterializeResult(
        metadata={
            "package": name,
            "path": MetadataValue.path(str(result.package_path)),
            "feature_service": manifest.feature_service,
            "holdout_pr_auc": holdout["pr_auc"],
            "holdout_roc_auc": holdout["roc_auc"],
            "training_seconds": round(time.perf_counter() - started, 2),
            **_decisions(records, log),
        }
    )
    yield from checks.check_results(gates, "candidate_package")


@asset(
    group_name=TRAINING,
    deps=[candidate_package],
    check_specs=checks.specs("candidate_evaluation", checks.EVALUATION_GATES),
    description="Candidate and champion scored as they serve (FeatureService, then the CPU "
    "ONNX graph) on the most recent window of matured labels; the quality gates read it.",
)
def candidate_evaluation(context: AssetExecutionContext, platform: PlatformResource):  # type: ignore[no-untyped-def]
    log, run = _run(context, platform)
    from models.package import read_manifest
    from orchestration.evaluation import figures, score_package

    spec = _domain(platform)
    candidate = _read_json(platform.work / CANDIDATE_RECORD, "candidate_package")
    folder = platform.work / TRAINING_SET_DIR
    window: dict[str, Any] = {
        k: candidate[k] for k in ("as_of", "window_start", "evaluation_rows") if k in candidate
    }
    events = pd.read_parquet(folder / EVALUATION_FILE)
    store = _store(platform)
    path = Path(candidate["path"])
    rules = platform.gates
    candidate_scores = score_package(
        path, read_manifest(path), store, events, spec, rules.segment_field
    )
    champion = _champion(platform)
    champion_scores = (
        score_package(champion[0], champion[1], store, events, spec, rules.segment_field)
        if champion
        else None
    )
    found = figures(
        candidate_scores,
        champion_scores,
        champion[1] if champion else None,
        spec.business_id,
        rules.calibration_bins,
        rules.min_segment_positives,
    )
    gates = [
        checks.pr_auc_gate(found, rules, window),
        checks.recall_gate(found, rules, window),
        checks.calibration_gate(found, rules, window),
        checks.segment_gate(found, rules, window),
        checks.predict_time_gate(found, rules),
    ]
    records = checks.record(
        log,
        run,
        gates,
        stage="evaluation",
        candidate=candidate["package"],
        champion=platform.live_champion or None,
        last_stage=True,
    )
    _write_json(
        platform.work / EVALUATION_RECORD,
        {"candidate": candidate["package"], "champion": platform.live_champion or None, **found},
    )
    shown = {k: v for k, v in found.items() if isinstance(v, int | float | str)}
    yield MaterializeResult(metadata={**shown, **_decisions(records, log)})
    yield from checks.check_results(gates, "candidate_evaluation")


def _champion(platform: PlatformResource):  # type: ignore[no-untyped-def]
    """(folder, manifest) of the champion; None when none is configured; Failure when missing."""
    from models.package import read_manifest

    path = platform.champion_path
    if path is None:
        return None
    try:
        return path, read_manifest(path)
    except (OSError, ValueError) as exc:
        raise Failure(
            f"champion {platform.live_champion} has no readable package under "
            f"{platform.model_root}: {exc}"
        ) from exc


# --- rollout --------------------------------------------------------------------------------


@asset(
    group_name=ROLLOUT,
    deps=[candidate_evaluation],
    description="A candidate that passed every gate, through the live service's admin API: "
    "shadow, canary steps held on live guardrails, then champion; a failed guardrail puts the "
    "previous deployment back at once and fails the run (the alert).",
)
def candidate_rollout(
    context: AssetExecutionContext, platform: PlatformResource
) -> MaterializeResult:
    import os

    from orchestration.rollout import Rollout, RolloutStopped, ServiceClient

    log, run = _run(context, platform)
    candidate = _read_json(platform.work / CANDIDATE_RECORD, "candidate_package")["package"]
    champion = platform.live_champion or None
    if not platform.service_url:
        record = log.record(
            run,
            "rollout",
            "not started",
            passed=None,
            candidate=candidate,
            champion=champion,
            message="ready for rollout; no live service configured (ORCHESTRATION_SERVICE_URL): "
            "the champion keeps answering",
        )
        return MaterializeResult(metadata={"rolled_out": False, **_decisions([record], log)})
    key = os.environ.get(platform.admin_key_env, "")
    if not key:
        raise Failure(
            f"{platform.admin_key_env} is not set: the rollout needs the service's admin API key"
        )
    domain = _domain(platform).name
    rollout = Rollout(
        client=ServiceClient(platform.service_url, key),
        candidate=candidate,
        domain=domain,
        rules=platform.rollout,
        log=log,
        run=run,
    )
    try:
        final = rollout.run_all()
    except RolloutStopped as stop:
        raise Failure(
            description=f"rollout of {candidate} stopped and rolled back: {stop}",
            metadata=_decisions(rollout.records, log),
        ) from stop
    _write_json(
        platform.promotion_record,
        {"package": candidate, "previous": champion, "promoted_at": clock.now().isoformat()},
    )
    return MaterializeResult(
        metadata={
            "rolled_out": True,
            "deployment": MetadataValue.json(final),
            **_decisions(rollout.records, log),
        }
    )


# --- batch scoring --------------------------------------------------------------------------


@asset(
    group_name=BATCH,
    deps=[online_store],
    description="Nightly: the objects of the last day scored offline by the champion, features "
    "as of the run (`python -m scoring_service batch-score`), into a dated table.",
)
def nightly_scores(context: AssetExecutionContext, platform: PlatformResource) -> MaterializeResult:
    log, run = _run(context, platform)
    spec = _domain(platform)
    now = clock.now()
    champion = platform.live_champion
    if not champion:
        raise Failure("no champion to score with (ORCHESTRATION_CHAMPION is empty)")
    name, version = champion.split("/", 1)
    events = pd.read_parquet(platform.path(platform.transactions))
    times = pd.to_datetime(events[spec.timestamp_field], utc=True)
    since = pd.Timestamp(now) - pd.Timedelta(days=platform.batch_scoring_days)
    active = events[(times >= since) & (times <= pd.Timestamp(now))]
    day = now.strftime("%Y-%m-%d")
    target = platform.path(platform.batch_scores_dir) / f"date={day}" / "scores.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    objects = target.parent / "objects.parquet"
    active.drop(columns=[spec.label_column, "label_available_at"], errors="ignore").to_parquet(
        objects, index=False
    )
    command = [
        sys.executable,
        "-m",
        "scoring_service",
        "batch-score",
        "--input",
        str(objects),
        "--out",
        str(target),
        "--repo",
        str(platform.repo),
        "--model-root",
        str(platform.path(platform.model_root)),
        "--name",
        name,
        "--version",
        version,
        "--as-of",
        now.isoformat(),
        "--device",
        "cpu",
    ]
    if platform.store_yaml is not None:
        command += ["--yaml", str(platform.store_yaml)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    objects.unlink(missing_ok=True)
    if done.returncode != 0:
        raise Failure(
            f"batch scoring of {len(active)} objects with {champion} failed "
            f"(exit {done.returncode}): {(done.stderr or done.stdout)[-2000:]}"
        )
    scores = pd.read_parquet(target)
    labels = scores["label"].value_counts().to_dict() if "label" in scores else {}
    record = log.record(
        run,
        "scoring",
        "nightly_scores",
        passed=True,
        champion=champion,
        message=f"{len(scores)} objects of the last {platform.batch_scoring_days:g} day(s) scored "
        f"by {champion} into {target}",
        metrics={"objects": len(scores), "labels": labels},
        evidence={"table": str(target), "as_of": now.isoformat()},
    )
    return MaterializeResult(
        metadata={
            "objects": len(scores),
            "labels": MetadataValue.json(labels),
            "table": MetadataValue.path(str(target)),
            "seconds": round(time.perf_counter() - started, 2),
            **_decisions([record], log),
        }
    )


# --- monitoring -----------------------------------------------------------------------------


@asset(
    group_name=MONITORING,
    deps=[online_store],
    description="Delayed-label performance and drift of the answers in the prediction log "
    "(`python -m models monitor`), the feature views' freshness, and the retraining triggers "
    "they fire.",
)
def model_monitoring(
    context: AssetExecutionContext, platform: PlatformResource
) -> MaterializeResult:
    log, run = _run(context, platform)
    from models.monitor import monitor
    from models.reports.monitoring import write
    from orchestration import triggers

    spec = _domain(platform)
    now = clock.now()
    rules = platform.triggers
    log_root = platform.path(platform.prediction_log)
    found: list[str] = []
    figures: dict[str, Any] = {}
    alerts: list[str] = []
    notes: list[str] = []
    if log_root.is_dir() and any(log_root.rglob("*.parquet")):
        labels = pd.read_parquet(
            platform.path(platform.transactions),
            columns=[spec.business_id, spec.label_column, "label_available_at"],
        )
        result = monitor(
            log_root,
            labels,
            now,
            model_root=platform.path(platform.model_root),
            rules=triggers.alert_rules(rules),
            id_column=spec.business_id,
            label_column=spec.label_column,
        )
        write(result, triggers.alert_rules(rules), platform.path(platform.monitor_dir))
        found += triggers.monitor_triggers(result, rules)
        figures = triggers.summary(result)
        alerts = [a.message for a in result.alerts]
        notes = result.notes
    else:
        notes.append(f"no prediction log at {log_root} yet: performance and drift not measured")
    ages = triggers.view_ages(_store(platform), now)
    found += triggers.staleness_triggers(ages, rules)
    record = log.record(
        run,
        "monitor",
        "model_monitoring",
        passed=not found,
        champion=platform.live_champion or None,
        message=f"{len(found)} retraining trigger(s)" + (f": {found[0]}" if found else ""),
        metrics=figures,
        evidence={"triggers": found, "alerts": alerts, "notes": notes, "view_age_hours": ages},
    )
    return MaterializeResult(
        metadata={
            "retrain_triggers": MetadataValue.json(found),
            "n_triggers": len(found),
            "alerts": MetadataValue.json(alerts),
            "view_age_hours": MetadataValue.json(ages),
            **_decisions([record], log),
        }
    )


ASSETS = [
    raw_events,
    batch_features,
    feature_definitions,
    online_store,
    training_set,
    candidate_package,
    candidate_evaluation,
    candidate_rollout,
    nightly_scores,
    model_monitoring,
]
