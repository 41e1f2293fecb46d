"""Retraining when monitoring reports a declared trigger (orchestration.triggers).

The sensor watches the ``model_monitoring`` asset: a materialization whose ``retrain_triggers``
is not empty requests one run of ``retraining_job`` (one per monitoring run: its run key), tagged
with the triggers, and appends a ``trigger`` record to the decision log.
"""

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    EventLogEntry,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    asset_sensor,
)

from orchestration.decisions import STARTED_BY_TAG, TRIGGER_TAG, DecisionLog, RunInfo
from orchestration.jobs import retraining_job
from orchestration.resources import PlatformResource
from orchestration.schedules import STATUS_ENV, default_status

SENSOR_NAME = "retrain_on_decay"


def triggers_of(event: EventLogEntry) -> list[str]:
    """The retraining triggers a ``model_monitoring`` materialization reported."""
    materialization = event.asset_materialization
    if materialization is None or "retrain_triggers" not in materialization.metadata:
        return []
    value = materialization.metadata["retrain_triggers"].value
    return [str(t) for t in value] if isinstance(value, list) else []


@asset_sensor(
    asset_key=AssetKey("model_monitoring"),
    job=retraining_job,
    name=SENSOR_NAME,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus(default_status().value),
    description=f"Retrain when monitoring reports a trigger (running when {STATUS_ENV}=running).",
    required_resource_keys={"platform"},
)
def retrain_on_decay(
    context: SensorEvaluationContext, asset_event: EventLogEntry
) -> RunRequest | SkipReason:
    platform: PlatformResource = context.resources.platform
    found = triggers_of(asset_event)
    if not found:
        return SkipReason(f"monitoring run {asset_event.run_id} reported no trigger")
    reason = f"monitor: {found[0]}" + (f" (+{len(found) - 1} more)" if len(found) > 1 else "")
    DecisionLog(platform.decision_log_path).record(
        RunInfo(
            run_id="", job=retraining_job.name, trigger=reason, started_by=f"sensor {SENSOR_NAME}"
        ),
        "trigger",
        "retraining",
        passed=None,
        champion=platform.live_champion or None,
        message=f"retraining requested by monitoring run {asset_event.run_id}",
        evidence={"triggers": found, "monitoring_run": asset_event.run_id},
    )
    return RunRequest(
        run_key=f"monitoring-{asset_event.run_id or asset_event.timestamp}",
        tags={TRIGGER_TAG: reason[:200], STARTED_BY_TAG: f"sensor {SENSOR_NAME}"},
    )


SENSORS = [retrain_on_decay]
