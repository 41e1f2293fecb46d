"""`python -m orchestration decisions`: the decision log read back, filtered, as lines or JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from orchestration.cli import app
from orchestration.decisions import DecisionLog, RunInfo, run_info

RUN = RunInfo(
    run_id="0f1e2d3c-run",
    job="retraining_job",
    trigger="schedule weekly_retraining",
    started_by="dagster daemon",
)


def written_log(tmp_path: Path) -> Path:
    log = DecisionLog(tmp_path / "decisions.jsonl")
    log.record_run_once(RUN, message="run of retraining_job")
    assert log.record_run_once(RUN) is None  # one run record per run
    log.record(
        RUN,
        "gate",
        "onnx_parity",
        passed=True,
        candidate="fraud_model/r1",
        champion="fraud_model/v1",
        message="max |diff| 2e-07",
    )
    log.record(
        RUN,
        "gate",
        "pr_auc_vs_champion",
        passed=False,
        candidate="fraud_model/r1",
        champion="fraud_model/v1",
        message="candidate PR-AUC 0.03 < champion 0.84 - 0.02",
        metrics={"candidate_pr_auc": 0.03, "champion_pr_auc": 0.84, "nan": float("nan")},
        evidence={"n_rows": 4966, "tolerance": 0.02},
    )
    log.record(
        RUN,
        "verdict",
        "candidate",
        passed=False,
        candidate="fraud_model/r1",
        message="stopped at evaluation: pr_auc_vs_champion",
    )
    return log.path


def test_every_record_is_listed_oldest_first(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["decisions", "--log", str(written_log(tmp_path))])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[2] for line in lines[:-1]] == ["run", "gate", "gate", "verdict"]
    assert "STOP" in lines[3] and "fraud_model/r1" in lines[3]
    assert lines[-1].startswith("4 of 4 record(s)")


def test_filters_and_json(tmp_path: Path) -> None:
    path = written_log(tmp_path)
    result = CliRunner().invoke(
        app, ["decisions", "--log", str(path), "--kind", "gate", "--failed", "--json"]
    )
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.output.splitlines()]
    assert record["subject"] == "pr_auc_vs_champion" and record["passed"] is False
    assert record["evidence"] == {"n_rows": 4966, "tolerance": 0.02}
    assert record["metrics"]["nan"] is None  # NaN is written as null
    assert record["trigger"] == "schedule weekly_retraining"
    one = CliRunner().invoke(app, ["decisions", "--log", str(path), "--run", "0f1e", "--last", "1"])
    assert "verdict" in one.output and "1 of 4" in one.output


def test_a_missing_log_or_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["decisions", "--log", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 1 and "no decisions yet" in missing.output
    wrong = CliRunner().invoke(
        app, ["decisions", "--log", str(written_log(tmp_path)), "--kind", "deploy"]
    )
    assert wrong.exit_code == 2 and "unknown kind" in wrong.output


def test_the_module_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestration", "decisions", "--log", str(written_log(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pr_auc_vs_champion" in result.stdout


def test_trigger_and_starter_come_from_the_run_tags() -> None:
    assert run_info("r", "j", {"dagster/schedule_name": "daily_monitoring"}).model_dump() == {
        "run_id": "r",
        "job": "j",
        "trigger": "schedule daily_monitoring",
        "started_by": "dagster daemon",
    }
    tagged = run_info(
        "r",
        "j",
        {
            "platform/trigger": "monitor: score PSI 0.31",
            "platform/started_by": "sensor retrain_on_decay",
        },
    )
    assert (tagged.trigger, tagged.started_by) == (
        "monitor: score PSI 0.31",
        "sensor retrain_on_decay",
    )
    manual = run_info("r", "j", {})
    assert manual.trigger == "manual" and manual.started_by.startswith("a person: UI, CLI or API")
