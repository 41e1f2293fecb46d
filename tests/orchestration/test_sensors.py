"""The retraining triggers: floors on matured-label precision and recall, monitor decay alerts,
stale views; and the sensor that turns a monitoring run's triggers into a retraining run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from dagster import AssetMaterialization, MetadataValue, build_sensor_context, instance_for_test

from models.monitor import ALL_DAYS, Alert, MonitorResult
from orchestration.decisions import DecisionLog
from orchestration.resources import PlatformResource, TriggerRules
from orchestration.sensors import retrain_on_decay
from orchestration.triggers import monitor_triggers, staleness_triggers


def group(day: str, precision: float, recall: float, labelled: int = 100) -> dict:
    return {
        "model_version": "fraud_model/v1",
        "variant": "champion",
        "day": day,
        "alert": {"n_labelled": labelled, "precision": precision, "recall": recall},
    }


def test_floors_on_matured_labels_fire_on_the_roll_up_only() -> None:
    result = MonitorResult(
        as_of=datetime(2026, 12, 1, tzinfo=UTC),
        groups=[group("2026-11-30", 0.01, 0.01), group(ALL_DAYS, 0.25, 0.7)],
    )
    (found,) = monitor_triggers(result, TriggerRules())
    assert "precision of the alerting labels" in found and "0.2500 (floor 0.3)" in found
    thin = MonitorResult(as_of=result.as_of, groups=[group(ALL_DAYS, 0.0, 0.0, labelled=5)])
    assert monitor_triggers(thin, TriggerRules()) == []


def test_decay_alerts_fire_and_missing_rates_do_not() -> None:
    where = ("fraud_model/v1", "champion", "2026-11-30")
    alerts = [
        Alert("score_psi", *where, "score", 0.31, 0.2),
        Alert("missing_rate_increase", *where, "amount", 0.5, 0.1),
    ]
    result = MonitorResult(as_of=datetime(2026, 12, 1, tzinfo=UTC), groups=[], alerts=alerts)
    assert monitor_triggers(result, TriggerRules()) == [alerts[0].message]


def test_a_stale_or_never_materialized_view_fires() -> None:
    found = staleness_triggers(
        {"ip_features": 0.5, "card_features": 7.0, "merchant_features": None}, TriggerRules()
    )
    assert found == [
        "feature view card_features was last materialized 7.0 h ago (> 3 h)",
        "feature view merchant_features was never materialized",
    ]
    assert staleness_triggers({"x": None}, TriggerRules(max_view_age_hours=None)) == []


def test_the_sensor_requests_retraining_on_a_trigger(tmp_path: Path) -> None:
    platform = PlatformResource(root=str(tmp_path))
    with instance_for_test() as instance:
        quiet = build_sensor_context(instance=instance, resources={"platform": platform})
        instance.report_runless_asset_event(
            AssetMaterialization(
                "model_monitoring", metadata={"retrain_triggers": MetadataValue.json([])}
            )
        )
        assert not retrain_on_decay.evaluate_tick(quiet).run_requests
        instance.report_runless_asset_event(
            AssetMaterialization(
                "model_monitoring",
                metadata={"retrain_triggers": MetadataValue.json(["score PSI 0.31 > 0.2"])},
            )
        )
        context = build_sensor_context(
            instance=instance, resources={"platform": platform}, cursor=quiet.cursor
        )
        (request,) = retrain_on_decay.evaluate_tick(context).run_requests
    assert request.tags["platform/trigger"] == "monitor: score PSI 0.31 > 0.2"
    assert request.tags["platform/started_by"] == "sensor retrain_on_decay"
    (record,) = DecisionLog(platform.decision_log_path).read(kinds=["trigger"])
    assert record.evidence["triggers"] == ["score PSI 0.31 > 0.2"]
    assert record.job == "retraining_job"
