"""The continuous-training loop replayed over 60 generated days with a new fraud pattern from
day 30, on a simulated clock (no real waiting): it detects the decay from matured labels,
retrains through the real assets and gates, shadows, canaries and promotes, all without a
person, and every step is in the decision log. The figures are printed (`-s` shows them) and
recorded in docs/continuous-training.md from `python -m orchestration replay`.
"""

from __future__ import annotations

import json
import math

import pytest

from orchestration.decisions import DecisionLog
from orchestration.replay import ReplaySettings, replay

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report_and_log(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    report = replay(root, ReplaySettings())
    print(
        "\n" + json.dumps({k: v for k, v in report.as_dict().items() if k != "days"}, default=str)
    )
    return report, DecisionLog(root / "data" / "orchestration" / "decisions.jsonl")


def test_the_loop_detects_retrains_and_promotes_after_the_drift(report_and_log) -> None:
    report, log = report_and_log
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
    report, _ = report_and_log
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


def test_the_command_offers_the_replay() -> None:
    from typer.testing import CliRunner

    from orchestration.cli import app

    result = CliRunner().invoke(app, ["replay", "--help"])
    assert result.exit_code == 0 and "--drift-day" in result.output
