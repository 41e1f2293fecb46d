"""When monitoring says "retrain": the declared triggers, read from what monitoring reports.

``models.monitor.monitor`` reports, per model version, variant and day, precision and recall of
the alerting labels on matured labels, score PSI and each input's PSI, and the alerts its rules
fired. A trigger fires when:

- the alerting labels' precision or recall on matured labels (all days) is below a floor;
- a monitor alert fired: a label's precision fell too far below its holdout figure, the score
  PSI or an input's PSI passed its threshold (per day);
- a feature view is stale: its online rows were last materialized too long ago.

Each trigger is one sentence a person can act on; the sensor starts retraining on any.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from feast import FeatureStore

from models.monitor import ALL_DAYS, AlertRules, MonitorResult
from orchestration.resources import TriggerRules

# Monitor rules that mean the model decays (a missing-rate jump means the data broke instead).
DECAY_RULES = ("precision_drop", "recall_drop", "score_psi", "feature_psi")


def alert_rules(rules: TriggerRules) -> AlertRules:
    """The monitor's alert rules for these triggers."""
    return AlertRules(
        max_precision_drop=rules.max_precision_drop,
        max_score_psi=rules.max_score_psi,
        max_feature_psi=rules.max_feature_psi,
        min_labelled=rules.min_labelled,
    )


def monitor_triggers(result: MonitorResult, rules: TriggerRules) -> list[str]:
    """Floors on matured-label precision and recall, and the monitor's decay alerts."""
    found: list[str] = []
    for group in result.groups:
        if group["day"] != ALL_DAYS:
            continue
        alert = group["alert"]
        if alert["n_labelled"] < rules.min_labelled:
            continue
        where = f"{group['model_version']} [{group['variant']}]"
        for metric, floor in (
            ("precision", rules.min_alert_precision),
            ("recall", rules.min_alert_recall),
        ):
            value = alert[metric]
            if floor is not None and not math.isnan(value) and value < floor:
                found.append(
                    f"{where}: {metric} of the alerting labels on matured labels is "
                    f"{value:.4f} (floor {floor:g})"
                )
    found += [a.message for a in result.alerts if a.rule in DECAY_RULES]
    return found


def view_ages(store: FeatureStore, now: datetime) -> dict[str, float | None]:
    """Hours since each feature view's online rows were last materialized (None: never)."""
    ages: dict[str, float | None] = {}
    for view in store.list_feature_views():
        end = view.most_recent_end_time
        if end is not None and end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        ages[view.name] = None if end is None else (now - end) / timedelta(hours=1)
    return ages


def staleness_triggers(ages: dict[str, float | None], rules: TriggerRules) -> list[str]:
    """A view never materialized, or materialized longer ago than declared."""
    limit = rules.max_view_age_hours
    if limit is None:
        return []
    found = []
    for view, age in sorted(ages.items()):
        if age is None:
            found.append(f"feature view {view} was never materialized")
        elif age > limit:
            found.append(
                f"feature view {view} was last materialized {age:.1f} h ago (> {limit:g} h)"
            )
    return found


def summary(result: MonitorResult) -> dict[str, Any]:
    """The roll-up figures of each model version and variant, for the decision log."""
    out = {}
    for group in result.groups:
        if group["day"] == ALL_DAYS:
            out[f"{group['model_version']} [{group['variant']}]"] = {
                "n_predictions": group["n_predictions"],
                "n_labelled": group["n_labelled"],
                "alert_precision": group["alert"]["precision"],
                "alert_recall": group["alert"]["recall"],
                "pr_auc": group["pr_auc"],
                "score_psi": group["score_psi"],
            }
    return out
