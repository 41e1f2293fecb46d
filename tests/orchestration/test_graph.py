"""The asset graph materialized in process on tiny generated data, on the embedded default: the
Feast CLI applies, pipelines aggregate and materialize, LightGBM trains, ONNX Runtime scores;
nothing is mocked. Then a candidate trained on shuffled labels is stopped at the PR-AUC gate,
with its evidence in the decision log, and the champion is untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from models.package import read_manifest, verify_package
from orchestration import checks
from orchestration.assets import (
    ASSETS,
    TRAINING_FILE,
    TRAINING_SET_DIR,
    candidate_evaluation,
    candidate_package,
    training_set,
)
from orchestration.decisions import DecisionLog
from orchestration.resources import GateRules, PlatformResource
from tests.orchestration.conftest import CHAMPION, platform

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

GATES = (*checks.PACKAGE_GATES, *checks.EVALUATION_GATES)
# The first run judges the graph, not the candidate: tolerances that any working model meets.
LENIENT = GateRules(
    pr_auc_tolerance=1.0,
    max_recall_drop=1.0,
    max_calibration_error=1.0,
    max_segment_recall_drop=1.0,  # a segment's 20-30 matured frauds: recall moves by 0.15 alone
    # Model time is the candidate's, not the graph's: the gate's verdicts are tested on planted
    # figures (test_checks.py); here it only has to run and be recorded.
    max_predict_us_per_row=1e6,
    max_predict_time_ratio=1e3,
)


def candidate_on_shuffled_labels(
    root: Path, resource: PlatformResource, instance: DagsterInstance
) -> ExecuteInProcessResult:
    """A corrupted label feed: the training events' labels shuffled, then train and judge."""
    path = root / "data" / "orchestration" / TRAINING_SET_DIR / TRAINING_FILE
    events = pd.read_parquet(path)
    events["is_fraud"] = np.random.default_rng(3).permutation(events["is_fraud"].to_numpy())
    events.to_parquet(path, index=False)
    return materialize(
        ASSETS,
        selection=[candidate_package, candidate_evaluation],
        resources={"platform": resource},
        instance=instance,
        raise_on_error=False,
    )


def check_outcomes(result: ExecuteInProcessResult) -> dict[str, bool]:
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


@pytest.fixture(scope="module")
def full_run(platform_root: Path) -> Iterator[ExecuteInProcessResult]:
    with DagsterInstance.ephemeral() as instance:
        yield materialize(
            ASSETS,
            resources={"platform": platform(platform_root, gates=LENIENT)},
            instance=instance,
        )


def test_the_whole_graph_materializes(
    full_run: ExecuteInProcessResult, platform_root: Path
) -> None:
    assert full_run.success
    materialized = {
        e.asset_key.to_user_string() for e in full_run.get_asset_materialization_events()
    }
    assert materialized == {a.key.to_user_string() for a in ASSETS}
    assert check_outcomes(full_run) == dict.fromkeys(GATES, True)
    # The online store holds what materialize-incremental loaded, and monitoring sees it fresh.
    repo = platform_root / "feature_repo" / "fraud" / "data"
    assert (repo / "online_store.db").stat().st_size > 0
    assert (repo / "registry.db").is_file()
    monitoring = next(
        e
        for e in full_run.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "model_monitoring"
    )
    assert monitoring.materialization.metadata["n_triggers"].value == 0


def test_the_run_and_every_gate_are_in_the_decision_log(
    full_run: ExecuteInProcessResult, platform_root: Path
) -> None:
    log = DecisionLog(platform_root / "data" / "orchestration" / "decisions.jsonl")
    records = log.read(run_id=full_run.run_id)
    runs = [r for r in records if r.kind == "run"]
    assert len(runs) == 1 and runs[0].trigger == "manual" and runs[0].started_by
    gates = {r.subject: r for r in records if r.kind == "gate"}
    assert set(gates) == set(GATES)
    assert all(r.passed for r in gates.values())
    candidate = gates[checks.PR_AUC].candidate
    assert candidate is not None and candidate.startswith("fraud_model/r")
    assert gates[checks.PR_AUC].champion == CHAMPION
    assert {"candidate_pr_auc", "champion_pr_auc"} <= set(gates[checks.PR_AUC].metrics)
    assert gates[checks.PR_AUC].evidence["n_rows"] >= 200
    assert gates[checks.PACKAGE_SEALED].evidence["digest"]
    (verdict,) = [r for r in records if r.kind == "verdict"]
    assert verdict.passed and verdict.candidate == candidate
    # No live service configured: the rollout says so and changes nothing.
    (rollout,) = [r for r in records if r.kind == "rollout"]
    assert rollout.subject == "not started" and "ORCHESTRATION_SERVICE_URL" in rollout.message
    # Nightly batch scoring: the last day's payments scored by the champion into a dated table.
    (nightly,) = [r for r in records if r.kind == "scoring"]
    table = pd.read_parquet(nightly.evidence["table"])
    assert nightly.metrics["objects"] == len(table) > 0 and nightly.champion == CHAMPION
    assert table["score"].between(0, 1).all() and "date=" in nightly.evidence["table"]
    # Labels as matured at training time: the window's rows had matured, later ones are left out.
    summary = json.loads(
        (platform_root / "data/orchestration/training_set/training_set.json").read_text()
    )
    assert summary["left_out_unmatured_labels"] > 0


def test_a_candidate_on_shuffled_labels_is_stopped_at_the_pr_auc_gate(
    full_run: ExecuteInProcessResult, platform_root: Path
) -> None:
    champion = platform_root / "models" / "packages" / CHAMPION
    seal, manifest = verify_package(champion), read_manifest(champion)
    resource = platform(platform_root)  # the declared gates
    with DagsterInstance.ephemeral() as instance:
        assert materialize(
            ASSETS, selection=[training_set], resources={"platform": resource}, instance=instance
        ).success
        result = candidate_on_shuffled_labels(platform_root, resource, instance)

    assert not result.success
    outcomes = check_outcomes(result)
    assert outcomes[checks.PR_AUC] is False
    assert all(outcomes[g] for g in checks.PACKAGE_GATES)
    records = DecisionLog(resource.decision_log_path).read(run_id=result.run_id)
    (gate,) = [r for r in records if r.kind == "gate" and r.subject == checks.PR_AUC]
    assert gate.passed is False and gate.champion == CHAMPION
    assert gate.metrics["candidate_pr_auc"] < gate.metrics["champion_pr_auc"] - 0.02
    assert gate.evidence["tolerance"] == resource.gates.pr_auc_tolerance
    assert gate.evidence["n_positives"] >= resource.gates.min_window_positives
    (verdict,) = [r for r in records if r.kind == "verdict"]
    assert verdict.passed is False and checks.PR_AUC in verdict.evidence["failed_gates"]
    assert "champion keeps answering" in verdict.message
    assert not [r for r in records if r.kind == "promotion"]
    # The champion is untouched: same seal, same manifest.
    assert verify_package(champion) == seal
    assert read_manifest(champion) == manifest
