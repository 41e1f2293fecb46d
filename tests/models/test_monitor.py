"""The monitor: a replayed day of answers joined with labels as they mature (simulated clock)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from feature_pipelines.fraud.schema import api_body
from feature_repo import prediction_log as plog
from models.cli import app as cli
from models.monitor import ALL_DAYS, AlertRules, monitor
from models.package import read_manifest
from scoring_service.api.app import create_app
from tests.drift_traffic import traffic
from tests.scoring_service.conftest import API_HEADERS, settings_for

pytestmark = pytest.mark.clock

ALERTING = ("suspicious", "highly_suspicious")
JOIN_KEYS = ["ip_address", "card_id", "merchant_id"]


@dataclass
class Replay:
    """Two days of transactions scored by the service, logged, with planted label times."""

    log_root: Path
    log: pd.DataFrame  # the logged answers
    labels: pd.DataFrame  # transaction_id, is_fraud, label_available_at
    end: datetime  # last transaction time


def log_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=plog.schema(JOIN_KEYS))


@pytest.fixture(scope="module")
def replay(
    sqlite_repo: Path,
    model_root: Path,
    transactions: pd.DataFrame,
    tmp_path_factory: pytest.TempPathFactory,
) -> Replay:
    end = transactions.event_timestamp.max()
    days = transactions[transactions.event_timestamp > end.floor("D") - pd.Timedelta(days=1)]
    bodies = [api_body(row) for row in days.itertuples()]
    settings = settings_for(sqlite_repo, model_root, max_batch_size=len(bodies))
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        response = client.post("/v1/transactions/score-batch", json={"transactions": bodies})
    assert response.status_code == 200, response.text
    answers = response.json()["results"]
    rows = []
    for i, (tx, answer) in enumerate(zip(days.itertuples(), answers, strict=True)):
        assert answer["transaction_id"] == tx.transaction_id
        freshness = answer["feature_freshness"]
        rows.append(
            {
                plog.REQUEST_ID: f"replay-{i}",
                plog.BUSINESS_ID: tx.transaction_id,
                plog.TS: tx.event_timestamp.to_pydatetime(),  # the replayed clock
                plog.DOMAIN: "fraud",
                plog.DEPLOYMENT: "default",
                # Alternate rows between two variants of the same package.
                plog.VARIANT: "champion" if i % 2 == 0 else "challenger",
                plog.MODEL_VERSION: answer["model_version"],
                **{key: getattr(tx, key) for key in JOIN_KEYS},
                plog.FEATURES: None,
                plog.FEATURE_NAMES: None,
                plog.STATUSES: {k: v["status"] for k, v in freshness.items()},
                plog.AGE_SECONDS: {k: v["age_seconds"] for k, v in freshness.items()},
                plog.SCORE: answer["score"],
                plog.LABEL: answer["label"],
                plog.REASONS: answer["reasons"],
                plog.LATENCY_MS: 1.0,
            }
        )
    root = tmp_path_factory.mktemp("prediction_log")
    written = plog.write(root, log_table(rows), "replay")
    assert len(written) == days.event_timestamp.dt.strftime("%Y-%m-%d").nunique()  # one per day
    # Planted label times: every other transaction's label is known a day after it happened,
    # the rest only after three weeks.
    labels = transactions[["transaction_id", "is_fraud", "event_timestamp"]].copy()
    slow = np.random.default_rng(0).random(len(labels)) < 0.5
    labels["label_available_at"] = labels["event_timestamp"] + pd.to_timedelta(
        np.where(slow, 21, 1), unit="D"
    )
    log = plog.read(root).to_pandas()
    return Replay(root, log, labels.drop(columns="event_timestamp"), end.to_pydatetime())


def direct(replay: Replay, as_of: datetime) -> dict[tuple[str, str], dict]:
    """Precision and recall per (variant, day), straight from the log and the labels."""
    frame = replay.log.merge(
        replay.labels, left_on=plog.BUSINESS_ID, right_on="transaction_id", how="left"
    )
    frame["day"] = frame[plog.TS].dt.strftime("%Y-%m-%d")
    out = {}
    groups = [*frame.groupby([plog.VARIANT, "day"])]
    groups += [((variant, ALL_DAYS), part) for variant, part in frame.groupby(plog.VARIANT)]
    for (variant, day), answers in groups:
        rows = answers[answers["label_available_at"] <= pd.Timestamp(as_of)]
        fraud = rows["is_fraud"].to_numpy() == 1
        figures: dict = {"n_labelled": len(rows)}
        for label in ALERTING:
            chosen = (rows[plog.LABEL] == label).to_numpy()
            figures[label] = (
                fraud[chosen].mean() if chosen.any() else math.nan,
                fraud[chosen].sum() / fraud.sum() if fraud.any() else math.nan,
            )
        alerted = rows[plog.LABEL].isin(ALERTING).to_numpy()
        figures["alert"] = (
            fraud[alerted].mean() if alerted.any() else math.nan,
            fraud[alerted].sum() / fraud.sum() if fraud.any() else math.nan,
        )
        out[(variant, day)] = figures
    return out


@pytest.mark.parametrize("after_days", [2, 30], ids=["half-matured", "all-matured"])
def test_precision_and_recall_equal_a_direct_computation(
    replay: Replay, model_root: Path, after_days: int
) -> None:
    as_of = replay.end + timedelta(days=after_days)
    result = monitor(replay.log_root, replay.labels, as_of, model_root=model_root)
    expected = direct(replay, as_of)
    holdout = read_manifest(model_root / "fraud_model" / "v1").metrics["holdout"]
    groups = {(g["variant"], g["day"]): g for g in result.groups}
    n_days = replay.log["date"].nunique()
    assert set(groups) == set(expected) and len(groups) == 2 * (n_days + 1)  # and "all" days
    for key, figures in expected.items():
        group = groups[key]
        assert group["model_version"] == "fraud_model/v1"
        assert group["n_labelled"] == figures["n_labelled"]
        for label in ALERTING:
            precision, recall = figures[label]
            got = group["labels"][label]
            assert got["precision"] == pytest.approx(precision, nan_ok=True), (key, label)
            assert got["recall"] == pytest.approx(recall, nan_ok=True), (key, label)
        assert group["alert"]["precision"] == pytest.approx(figures["alert"][0], nan_ok=True)
        assert group["alert"]["recall"] == pytest.approx(figures["alert"][1], nan_ok=True)
        # Holdout figures of the package sit next to them.
        assert group["holdout"]["pr_auc"] == pytest.approx(holdout["pr_auc"], rel=1e-12)
        assert group["holdout"]["pr_auc"] > holdout["positive_rate"]  # a model, not chance
    total = sum(g["n_predictions"] for k, g in groups.items() if k[1] == ALL_DAYS)
    labelled = sum(g["n_labelled"] for k, g in groups.items() if k[1] == ALL_DAYS)
    pending = sum(g["n_pending"] for k, g in groups.items() if k[1] == ALL_DAYS)
    assert total == len(replay.log) and labelled + pending == total
    if after_days == 2:
        # Labels that are not yet known are not used: about half are still pending.
        assert 0.3 * total < pending < 0.7 * total
        alerted = sum(
            g["labels"][label]["n_labelled"]
            for k, g in groups.items()
            if k[1] == ALL_DAYS
            for label in ALERTING
        )
        assert alerted > 0, "the replay should hold matured alerts to measure"
    else:
        assert pending == 0


def test_a_label_counts_from_its_label_available_at_on(replay: Replay, model_root: Path) -> None:
    row = replay.log.iloc[0]
    labels = replay.labels[replay.labels["transaction_id"] == row[plog.BUSINESS_ID]].copy()
    known_at = labels["label_available_at"].iloc[0].to_pydatetime()
    before = monitor(replay.log_root, labels, known_at - timedelta(microseconds=1))
    at = monitor(replay.log_root, labels, known_at)
    # Not known a microsecond before its label_available_at; known from that instant on.
    key = (row[plog.VARIANT], row["date"])
    group = next(g for g in before.groups if (g["variant"], g["day"]) == key)
    assert group["n_labelled"] == 0
    group = next(g for g in at.groups if (g["variant"], g["day"]) == key)
    assert group["n_labelled"] == 1


def test_cli_writes_reports_and_exits_non_zero_when_an_alert_fires(
    replay: Replay, model_root: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.parquet"
    replay.labels.to_parquet(labels)
    as_of = (replay.end + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")
    calm = tmp_path / "calm.yaml"
    calm.write_text(
        "max_precision_drop: null\nmax_score_psi: null\nmax_feature_psi: null\nmin_rows: 1\n"
    )
    common = ["monitor", "--log", str(replay.log_root), "--labels", str(labels),
              "--as-of", as_of, "--model-root", str(model_root)]  # fmt: skip

    quiet = CliRunner().invoke(
        cli, [*common, "--out", str(tmp_path / "calm"), "--alerts", str(calm)]
    )
    assert quiet.exit_code == 0, quiet.output
    document = json.loads((tmp_path / "calm" / "monitor.json").read_text())
    n_days = replay.log["date"].nunique()
    assert document["alerts"] == [] and len(document["groups"]) == 2 * (n_days + 1)
    page = (tmp_path / "calm" / "monitor.html").read_text()
    for variant in ("champion", "challenger"):
        for figure in ("performance", "drift"):
            assert f'id="fig-fraud-model-v1-{variant}-{figure}"' in page

    # Any score PSI above zero: a rule that must fire on real traffic.
    loud = CliRunner().invoke(
        cli,
        [*common, "--out", str(tmp_path / "loud"), "--alerts", str(calm), "--max-score-psi", "0"],
    )
    assert loud.exit_code == 1, loud.output
    assert "ALERT fraud_model/v1" in loud.output
    fired = json.loads((tmp_path / "loud" / "monitor.json").read_text())["alerts"]
    assert {a["rule"] for a in fired} == {"score_psi"} and len(fired) == 2 * n_days


def test_monitor_drift_flags_the_shifted_input_on_its_day(model_root: Path, tmp_path: Path) -> None:
    manifest = read_manifest(model_root / "fraud_model" / "v1")
    thresholds = manifest.label_thresholds
    rows = []
    start = datetime(2026, 3, 1, tzinfo=UTC)
    for day in range(2):
        matrix, scores = traffic(manifest, 2000, seed=10 + day)
        if day == 1:  # planted drift on the second day: amounts tripled
            matrix[:, manifest.features.index("amount")] *= 3.0
        for i in range(len(scores)):
            label = (
                "highly_suspicious"
                if scores[i] >= thresholds.highly_suspicious
                else "suspicious"
                if scores[i] >= thresholds.suspicious
                else "not_fraud"
            )
            rows.append(
                {
                    plog.REQUEST_ID: f"r{day}-{i}",
                    plog.BUSINESS_ID: f"t{day}-{i}",
                    plog.TS: start + timedelta(days=day, seconds=20 * i),
                    plog.DOMAIN: "fraud",
                    plog.DEPLOYMENT: "default",
                    plog.VARIANT: "champion",
                    plog.MODEL_VERSION: "fraud_model/v1",
                    plog.FEATURES: matrix[i].tolist(),
                    plog.FEATURE_NAMES: manifest.features,
                    plog.SCORE: float(scores[i]),
                    plog.LABEL: label,
                }
            )
    plog.write(tmp_path / "log", log_table(rows), "synthetic")
    no_labels = pd.DataFrame(
        {"transaction_id": [], "is_fraud": [], "label_available_at": pd.to_datetime([], utc=True)}
    )
    result = monitor(
        tmp_path / "log", no_labels, start + timedelta(days=3), model_root=model_root,
        rules=AlertRules(),
    )  # fmt: skip
    by_day = {g["day"]: g for g in result.groups}
    first, second = by_day["2026-03-01"], by_day["2026-03-02"]
    assert max(f["psi"] for f in first["features"].values()) < 0.2
    assert {n for n, f in second["features"].items() if f["psi"] > 0.2} == {"amount"}
    assert first["score_psi"] < 0.2 and second["score_psi"] < 0.2
    assert [(a.rule, a.day, a.subject) for a in result.alerts] == [
        ("feature_psi", "2026-03-02", "amount")
    ]
    assert first["n_labelled"] == 0 and math.isnan(first["labels"]["suspicious"]["precision"])
