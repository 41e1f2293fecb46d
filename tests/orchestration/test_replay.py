"""The continuous-training loop replayed over 60 generated days with a new fraud pattern from
day 30, on a simulated clock (no real waiting): it detects the decay from matured labels,
retrains through the real assets and gates, shadows, canaries and promotes, all without a
person, and every step is in the decision log. Beside the batch models an online learner
learns each label as it matures, from the vectors the first champion scored; it is compared
day by day on the new pattern with the first and the day's champion, and restarted from its
snapshot mid-way. The figures are printed (`-s` shows them) and recorded in
docs/continuous-training.md from `python -m orchestration replay`.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import pandas as pd
import pytest

from orchestration.decisions import DecisionLog
from orchestration.replay import ReplaySettings, replay

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report_and_log(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    report = replay(root, ReplaySettings())
    print(
        "\n"
        + json.dumps(
            {k: v for k, v in report.as_dict().items() if k not in ("days", "learner_by_day")},
            default=str,
        )
    )
    return report, DecisionLog(root / "data" / "orchestration" / "decisions.jsonl"), root


def test_the_loop_detects_retrains_and_promotes_after_the_drift(report_and_log) -> None:
    report, log, _ = report_and_log
    drift = report.settings["drift_day"]
    # Detected from matured labels after the drift, never before it.
    assert report.first_trigger_day is not None and report.first_trigger_day >= drift
    assert not [d for d in report.days if d.day < drift and any("trigger" in e for e in d.events)]
    # A candidate passed the gates, went through shadow and every canary step, and took over.
    assert report.first_promotion_after_drift is not None
    assert report.first_promotion_after_drift > report.first_trigger_day
    kinds = [(r.kind, r.subject) for r in log.read(kinds=["rollout", "promotion"])]
    promoted = report.promotions[1]["package"]
    steps = [
        (r.kind, r.subject)
        for r in log.read(candidate=promoted)
        if r.kind in ("rollout", "promotion") and r.passed
    ]
    assert steps == [
        ("rollout", "shadow"),
        *[("rollout", f"canary {w:.0%}") for w in report.settings["canary_weights"]],
        ("promotion", "champion"),
    ], kinds
    # Nothing was started by a person: every retraining run names its trigger.
    runs = log.read(kinds=["run"])
    assert runs and all(r.trigger != "manual" for r in runs)
    assert any(r.trigger.startswith("monitor: ") for r in runs)


def test_the_report_measures_the_drift_and_the_recovery(report_and_log) -> None:
    """The figures exist and are consistent; their values are reported, not asserted: on a
    month of generated data they rest on a few hundred frauds."""
    report, _, _ = report_and_log
    assert 0 < report.alert_rate < 0.5
    assert report.recall_after_drift < report.recall_before_drift
    for value in (
        report.recall_before_drift,
        report.recall_after_drift,
        report.recall_after_promotion,
        report.new_pattern_recall_old_champion,
        report.new_pattern_recall_promoted,
    ):
        assert value is not None and 0 <= value <= 1 and not math.isnan(value)
    assert report.days_to_detect is not None and report.days_to_detect >= 0
    assert [d.day for d in report.days] == list(
        range(report.settings["first_training_day"], report.settings["days"])
    )


def test_the_online_learner_is_compared_on_the_new_pattern_every_day_after_the_drift(
    report_and_log,
) -> None:
    """The learner's, the first champion's and the day's champion's recall on the new pattern
    (and on all reported fraud) at the pre-drift alert rate, for every day from the drift on.
    Which is higher is reported, not asserted: a day holds a handful of the new pattern's
    payments."""
    report, _, _ = report_and_log
    drift, days = report.settings["drift_day"], report.settings["days"]
    table = report.learner_by_day
    print(
        f"\nday  new  learner  old champion  champion (recall on the new pattern, at "
        f"{report.alert_rate:.3f})"
    )
    for row in table:
        print(
            f"{row['day']:>3} {row['new_pattern']:>4}  {row['learner_new_pattern_recall']:7.3f}  "
            f"{row['old_champion_new_pattern_recall']:12.3f}  "
            f"{row['champion_new_pattern_recall']:8.3f}  {row['champion']}"
        )
    print(json.dumps(report.learner_comparison, indent=1))
    assert [row["day"] for row in table] == list(range(drift, days))
    by_day = {d.day: d for d in report.days}
    # The pattern comes in bursts: a day without one of its payments has no recall on it.
    assert sum(row["new_pattern"] > 0 for row in table) >= len(table) // 2
    for row in table:
        day = by_day[row["day"]]
        pattern: tuple[float, ...] = (
            day.learner_new_pattern_recall,
            day.old_champion_new_pattern_recall,
            day.champion_new_pattern_recall,
        )
        if row["new_pattern"] == 0:
            assert all(math.isnan(value) for value in pattern), row
            pattern = ()
        for value in (
            *pattern,
            day.learner_recall_at_rate,
            day.old_champion_recall_at_rate,
            day.champion_recall_at_rate,
        ):
            assert 0 <= value <= 1 and not math.isnan(value), row
        assert row["learner_new_pattern_recall"] is day.learner_new_pattern_recall
    for who in ("learner", "old_champion", "champion"):
        for figure in ("new_pattern_recall", "recall"):
            value = report.learner_comparison[f"{who}_{figure}"]
            assert 0 <= value <= 1 and not math.isnan(value)
    # The learner ranks by what it learned: a ranking by chance (an untrained learner's flat
    # scores) catches about the alert rate's share of the fraud.
    assert report.learner_comparison["learner_recall"] > 2 * report.alert_rate
    # What the learner is for: a pattern the first champion never saw is learned from its
    # matured labels (the pooled figures rest on a few hundred of its payments).
    assert (
        report.learner_comparison["learner_new_pattern_recall"]
        > report.learner_comparison["old_champion_new_pattern_recall"]
    )


def test_the_learner_learns_only_matured_labels_and_survives_a_restart(report_and_log) -> None:
    report, _, root = report_and_log
    # Every day it had learned exactly the labels of the payments answered since the first
    # champion that had matured by the end of that day: never one earlier.
    events = pd.read_parquet(root / "data" / "transactions.parquet")
    at = pd.to_datetime(events["event_timestamp"], utc=True)
    matured = pd.to_datetime(events["label_available_at"], utc=True)
    start = datetime.fromisoformat(report.start)
    first = start + timedelta(days=report.settings["first_training_day"])
    for day in report.days:
        end = start + timedelta(days=day.day + 1)
        expected = int(((at >= first) & (at < end) & (matured <= end) & (matured >= at)).sum())
        assert day.learner_labels_learned == expected, day.day
    answered = int(((at >= first) & (at < start + timedelta(days=report.settings["days"]))).sum())
    assert report.learner_labels_learned == report.days[-1].learner_labels_learned
    assert report.learner_labels_pending == answered - report.learner_labels_learned > 0
    # Restarted from its sealed snapshot mid-way: the same scores on that day's payments, the
    # same labels learned and pending, and the replay went on with the restored learner.
    restart = report.learner_restart
    print("\nrestart: " + json.dumps(restart))
    assert (
        restart["day"]
        == report.settings["drift_day"] + report.settings["learner_restart_after_drift"]
    )
    assert restart["rows"] > 0 and restart["scores_equal"] and restart["max_score_difference"] == 0
    assert restart["labels_learned"][0] == restart["labels_learned"][1] > 0
    assert restart["labels_pending"][0] == restart["labels_pending"][1]
    assert (root / "models" / "online").is_dir()
    assert any("learner restarted" in e for d in report.days for e in d.events)


def test_the_command_offers_the_replay() -> None:
    from typer.testing import CliRunner

    from orchestration.cli import app

    result = CliRunner().invoke(app, ["replay", "--help"])
    assert result.exit_code == 0 and "--drift-day" in result.output
