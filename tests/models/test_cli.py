"""The lifecycle's command line: its commands, the refusals it turns into usage errors, and a
monitor run on a planted prediction log that exits 1 when an alert fires."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from feature_repo import prediction_log as plog
from models.cli import _utc, app
from models.package import score_bins, write_package
from tests.conftest import ROOT
from tests.models.package_helpers import toy_files, toy_manifest

FRAUD = ROOT / "feature_repo" / "fraud"
START = datetime(2026, 3, 1, tzinfo=UTC)


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def said(output: str) -> str:
    """A command's output as one line: the frame of a usage error, and its line breaks, gone."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def test_the_commands_of_the_lifecycle_are_listed() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("dataset", "train", "report", "monitor"):
        assert command in said(result.output)


@pytest.mark.parametrize("command", ["dataset", "train"])
def test_a_command_without_a_domain_asks_for_one(command: str) -> None:
    result = invoke(command)
    assert result.exit_code == 2
    assert "name the domain's folder: --domain feature_repo/<domain>" in said(result.output)


def test_a_broken_domain_file_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "domain.yaml").write_text("name: [unclosed\n")
    result = invoke("dataset", "--domain", str(tmp_path))
    assert result.exit_code == 2
    assert "not valid YAML" in said(result.output)
    assert str(tmp_path / "domain.yaml") in said(result.output).replace(" ", "")


def test_one_version_cannot_name_several_packages() -> None:
    services = ["--feature-service", "fraud_model_v1", "--feature-service", "fraud_model_v2"]
    result = invoke("train", "--domain", str(FRAUD), "--version", "v9", *services)
    assert result.exit_code == 2
    assert "--version names one package" in said(result.output)


def test_report_refusals_are_usage_errors(tmp_path: Path) -> None:
    package = write_package(tmp_path, toy_manifest(), toy_files())
    result = invoke("report", "--package", str(package))
    assert result.exit_code == 2
    assert "no domain file: pass --domain" in said(result.output)


def test_naive_times_are_utc() -> None:
    assert _utc(datetime(2026, 3, 1, 12)) == datetime(2026, 3, 1, 12, tzinfo=UTC)
    aware = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert _utc(aware) is aware and _utc(None) is None


@pytest.fixture()
def planted_log(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(log, labels parquet, package root): two days of a toy model's answers; on the second,
    the scores move far above the holdout's."""
    rng = np.random.default_rng(8)
    holdout_scores = rng.beta(1.0, 12.0, 5_000)
    root = tmp_path / "packages"
    write_package(root, toy_manifest(baseline_score_bins=score_bins(holdout_scores)), toy_files())
    rows = []
    for day in range(2):
        scores = rng.beta(1.0, 12.0, 300) + (0.3 if day == 1 else 0.0)
        for i, score in enumerate(scores):
            rows.append(
                {
                    plog.REQUEST_ID: f"r{day}-{i}",
                    plog.BUSINESS_ID: f"tx_{day}_{i}",
                    plog.TS: START + timedelta(days=day, minutes=i),
                    plog.DOMAIN: "fraud",
                    plog.DEPLOYMENT: "default",
                    plog.VARIANT: "champion",
                    plog.MODEL_VERSION: "toy_model/v1",
                    plog.SCORE: float(score),
                    plog.LABEL: "suspicious" if score >= 0.3 else "not_fraud",
                }
            )
    schema = plog.schema(["ip_address", "card_id", "merchant_id"])
    plog.write(tmp_path / "log", pa.Table.from_pylist(rows, schema=schema), "planted")
    labels = pd.DataFrame(
        {
            "transaction_id": [r[plog.BUSINESS_ID] for r in rows],
            "is_fraud": (rng.random(len(rows)) < 0.05).astype(int),
            "label_available_at": [r[plog.TS] + timedelta(days=1) for r in rows],
        }
    )
    labels.to_parquet(tmp_path / "labels.parquet")
    return tmp_path / "log", tmp_path / "labels.parquet", root


def test_monitor_writes_its_files_and_exits_1_when_an_alert_fires(
    planted_log: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    log, labels, root = planted_log
    rules = tmp_path / "rules.yaml"
    rules.write_text("max_precision_drop: null\nmax_feature_psi: null\nmin_rows: 100\n")
    common = ["monitor", "--log", str(log), "--labels", str(labels), "--model-root", str(root),
              "--alerts", str(rules), "--as-of", "2026-03-05T00:00:00"]  # fmt: skip

    calm = invoke(*common, "--out", str(tmp_path / "calm"), "--max-score-psi", "100")
    assert calm.exit_code == 0, calm.output
    document = json.loads((tmp_path / "calm" / "monitor.json").read_text())
    assert document["as_of"] == "2026-03-05T00:00:00+00:00"  # a naive --as-of is UTC
    assert document["alerts"] == []
    assert (tmp_path / "calm" / "monitor.html").is_file()

    loud = invoke(*common, "--out", str(tmp_path / "loud"))  # the rules' score PSI limit, 0.2
    assert loud.exit_code == 1, loud.output
    assert "ALERT toy_model/v1 [champion] 2026-03-02: score_psi of score" in loud.output
    fired = json.loads((tmp_path / "loud" / "monitor.json").read_text())["alerts"]
    assert [(a["rule"], a["day"]) for a in fired] == [("score_psi", "2026-03-02")]
