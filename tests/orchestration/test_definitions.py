"""The definitions load: Definitions validates, every job, schedule and sensor resolves, and
Dagster's own command line validates the module the UI and the daemon load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, Definitions

from orchestration import checks
from orchestration.definitions import build, defs
from orchestration.resources import PlatformResource

JOBS = {"batch_features_job", "feature_definitions_job", "monitoring_job", "retraining_job"}
SCHEDULES = {
    "hourly_batch_features": ("batch_features_job", "5 * * * *"),
    "daily_monitoring": ("monitoring_job", "30 6 * * *"),
    "weekly_retraining": ("retraining_job", "0 3 * * 1"),
}


def test_the_definitions_validate() -> None:
    Definitions.validate_loadable(defs)


def test_every_job_schedule_and_sensor_resolves() -> None:
    repository = defs.get_repository_def()
    assert {job.name for job in repository.get_all_jobs()} >= JOBS
    for name, (job, cron) in SCHEDULES.items():
        schedule = defs.resolve_schedule_def(name)
        assert schedule.job_name == job
        assert schedule.cron_schedule == cron
        assert schedule.execution_timezone == "UTC"
    sensor = defs.resolve_sensor_def("retrain_on_decay")
    assert sensor.job_name == "retraining_job"
    for job in JOBS:
        assert defs.resolve_job_def(job).name == job


def test_the_asset_graph_and_its_gates() -> None:
    graph = defs.resolve_asset_graph()
    upstream = {
        "batch_features": {"raw_events"},
        "online_store": {"batch_features", "feature_definitions"},
        "training_set": {"batch_features", "feature_definitions"},
        "candidate_package": {"training_set"},
        "candidate_evaluation": {"candidate_package"},
        "model_monitoring": {"online_store"},
    }
    for asset, parents in upstream.items():
        found = {key.to_user_string() for key in graph.get(AssetKey(asset)).parent_keys}
        assert found == parents, asset
    gates = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}
    assert gates == {("candidate_package", g) for g in checks.PACKAGE_GATES} | {
        ("candidate_evaluation", g) for g in checks.EVALUATION_GATES
    }
    for key in graph.asset_check_keys:
        assert graph.get_check_spec(key).blocking, key


def test_the_resource_reads_the_environment(tmp_path: Path) -> None:
    platform = PlatformResource.from_env(
        {
            "ORCHESTRATION_ROOT": str(tmp_path),
            "ORCHESTRATION_CHAMPION": "fraud_model/v2",
            "ORCHESTRATION_TRAINING_ROUNDS": "50",
        }
    )
    assert platform.champion_path == tmp_path / "models/packages/fraud_model/v2"
    assert platform.training_rounds == 50
    assert platform.decision_log_path == tmp_path / "data/orchestration/decisions.jsonl"
    assert PlatformResource.from_env({"ORCHESTRATION_CHAMPION": ""}).champion_path is None
    Definitions.validate_loadable(build(platform))


@pytest.mark.slow
def test_dagster_validates_the_module() -> None:
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "orchestration.definitions"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr
