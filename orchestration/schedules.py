"""What runs when: batch features hourly, monitoring daily, batch scoring nightly, retraining
weekly (UTC).

Schedules start stopped on a development machine (`make orchestrate`: turn them on in the UI);
``ORCHESTRATION_SCHEDULES=running`` starts them running, as the Kubernetes deployment does.
"""

from __future__ import annotations

import os

from dagster import DefaultScheduleStatus, ScheduleDefinition

from orchestration.jobs import (
    batch_features_job,
    batch_scoring_job,
    monitoring_job,
    retraining_job,
)

STATUS_ENV = "ORCHESTRATION_SCHEDULES"


def default_status() -> DefaultScheduleStatus:
    """Running when ``ORCHESTRATION_SCHEDULES=running``, stopped otherwise."""
    running = os.environ.get(STATUS_ENV, "stopped").strip().lower() == "running"
    return DefaultScheduleStatus.RUNNING if running else DefaultScheduleStatus.STOPPED


hourly_batch_features = ScheduleDefinition(
    name="hourly_batch_features",
    job=batch_features_job,
    # Five minutes past: the hour's events have landed; aggregate, then materialize-incremental.
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    default_status=default_status(),
    description="Aggregate the raw events into batch features, then materialize-incremental.",
)

daily_monitoring = ScheduleDefinition(
    name="daily_monitoring",
    job=monitoring_job,
    # After a day's answers are in the log and the night's labels (chargebacks) have landed.
    cron_schedule="30 6 * * *",
    execution_timezone="UTC",
    default_status=default_status(),
    description="Delayed-label monitoring (`python -m models monitor` semantics) and freshness.",
)

weekly_retraining = ScheduleDefinition(
    name="weekly_retraining",
    job=retraining_job,
    # A fraud model decays within weeks: a fresh candidate weekly, whether or not a trigger fired.
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=default_status(),
    description="Retrain on the labels matured so far; the gates decide.",
)

nightly_batch_scoring = ScheduleDefinition(
    name="nightly_batch_scoring",
    job=batch_scoring_job,
    # After the night's last hourly aggregation: features as of 02:15 cover the whole day.
    cron_schedule="15 2 * * *",
    execution_timezone="UTC",
    default_status=default_status(),
    description="Score the last day's objects offline with the champion into a dated table.",
)

SCHEDULES = [hourly_batch_features, daily_monitoring, weekly_retraining, nightly_batch_scoring]
