"""Rollout without a person, against a real service process: a sound candidate goes through
shadow and every canary step to champion; one whose graph is slow live (it passed every offline
gate: same trees, same parity) is rolled back at its first canary step, with every client answer a
200 and the reason in the decision log.

The candidates are sealed copies of the session's v1 package; the slow one's CPU graph gets a
side computation on the batch's shape (six 512x512 matrix products) whose result is multiplied by
zero and added to the probabilities: its answers equal v1's to the bit, its model time per call is
tens of milliseconds instead of a fraction of one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from orchestration.decisions import DecisionLog, RunInfo
from orchestration.resources import RolloutRules
from orchestration.rollout import (
    Rollout,
    RolloutStopped,
    ServiceClient,
    promoted,
    psi,
    quantile,
    with_canary,
)
from tests.fixtures import service
from tests.fixtures.load import Load
from tests.fixtures.service import ADMIN_KEY, Replica, as_request, copy_package, launch_replica

pytestmark = pytest.mark.slow

deployment_packages = service.deployment_packages

LIVE = {
    "name": "v1 champion, rt fallback",
    "sticky_field": "card_id",
    "salt": "rollout-test",
    "champion": {"name": "champion", "package": "fraud_model/v1", "weight": 1.0},
    "fallback": [{"name": "request-only", "package": "fraud_model/rt"}],
}
RULES = RolloutRules(
    canary_weights=[0.05, 0.25, 0.5, 1.0],
    shadow_min_rows=500,
    step_min_rows=400,
    max_hold_seconds=240,
    poll_seconds=0.5,
    max_request_p99_ms=8000,  # the replica's deadline is 10 s: a loaded machine stays inside
)


def slow_graph(package: Path, layers: int = 6, width: int = 512) -> None:
    """Make the package's CPU graph slow without changing one output bit; seal it again."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from models.package import MANIFEST_FILE, seal_package
    from models.package.seal import sha256_file

    path = package / "model.onnx"
    model = onnx.load(path)
    graph = model.graph
    producer = next(n for n in graph.node if "probabilities" in n.output)
    producer.output[list(producer.output).index("probabilities")] = "probabilities_exact"
    rng = np.random.default_rng(0)
    graph.initializer.extend(
        [
            numpy_helper.from_array(
                rng.normal(0, 0.05, (width, width)).astype(np.float32), "slow_w"
            ),
            numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "slow_zero"),
        ]
    )
    nodes = [
        helper.make_node("Shape", ["features"], ["slow_shape"]),
        helper.make_node("Cast", ["slow_shape"], ["slow_shape_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["slow_shape_f"], ["slow_n"], keepdims=1),
        helper.make_node("Mul", ["slow_w", "slow_n"], ["slow_h0"]),
    ]
    last = "slow_h0"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [last, "slow_w"], [f"slow_m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_h{i + 1}"]))
        last = f"slow_h{i + 1}"
    nodes += [
        helper.make_node("ReduceSum", [last], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", ["probabilities_exact", "slow_nothing"], ["probabilities"]),
    ]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    manifest["graphs"]["cpu"]["sha256"] = sha256_file(path)
    (package / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    seal_package(package)


@pytest.fixture()
def packages(deployment_packages: Path, tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "packages"
    shutil.copytree(deployment_packages, root)
    copy_package(root / "fraud_model" / "v1", root / "fraud_model" / "r-sound")
    slow_graph(copy_package(root / "fraud_model" / "v1", root / "fraud_model" / "r-slow"))
    return root


@pytest.fixture()
def replica(sqlite_repo: Path, packages: Path, tmp_path: Path):
    file = tmp_path / "deployment.yaml"
    file.write_text(yaml.safe_dump(LIVE, sort_keys=False))
    running = launch_replica(
        sqlite_repo, sqlite_repo / "feature_store.yaml", packages, tmp_path, deployment=str(file)
    )
    running.wait_ready()
    yield running
    running.stop()


def traffic(replica: Replica, transactions: pd.DataFrame) -> Load:
    """Batches of 50 payments of many cards, back to back from two callers."""
    bodies = [as_request(row) for _, row in transactions.tail(5000).iterrows()]

    def batch(i: int) -> dict:
        start = (i * 50) % (len(bodies) - 50)
        return {"transactions": bodies[start : start + 50]}

    return Load(
        replica.url,
        bodies,
        threads=2,
        path="/v1/transactions/score-batch",
        pause_s=0,
        body_for=batch,
        timeout_s=60,
    )


def rollout(replica: Replica, candidate: str, work: Path) -> Rollout:
    return Rollout(
        client=ServiceClient(replica.url, ADMIN_KEY),
        candidate=candidate,
        domain="fraud",
        rules=RULES,
        log=DecisionLog(work / "decisions.jsonl"),
        run=RunInfo(run_id="test-run", job="retraining_job", trigger="manual", started_by="test"),
    )


def test_a_sound_candidate_goes_from_shadow_to_champion(
    replica: Replica, transactions: pd.DataFrame, tmp_path: Path
) -> None:
    controller = rollout(replica, "fraud_model/r-sound", tmp_path)
    with traffic(replica, transactions) as load:
        final = controller.run_all()
    assert load.answers and load.failures == []
    assert {a.status for a in load.answers} == {200}
    assert final["champion"]["package"] == "fraud_model/r-sound"
    assert final["fallback"][0] == {"name": "previous-champion", "package": "fraud_model/v1"}
    assert ServiceClient(replica.url, ADMIN_KEY).deployment()["champion"]["package"] == (
        "fraud_model/r-sound"
    )
    records = DecisionLog(tmp_path / "decisions.jsonl").read()
    steps = [(r.kind, r.subject, r.passed) for r in records]
    assert steps == [
        ("rollout", "shadow", True),
        ("rollout", "canary 5%", True),
        ("rollout", "canary 25%", True),
        ("rollout", "canary 50%", True),
        ("rollout", "canary 100%", True),
        ("promotion", "champion", True),
    ], [(s, r.message) for s, r in zip(steps, records, strict=True)]
    canary = records[1]
    assert canary.metrics["rows"] >= RULES.step_min_rows
    assert {g["name"] for g in canary.evidence["guardrails"]} == {
        "error_rate",
        "deadline_misses",
        "model_time",
        "request_p99",
        "score_psi",
    }


def test_a_candidate_slow_live_is_rolled_back_at_its_first_canary_step(
    replica: Replica, transactions: pd.DataFrame, tmp_path: Path
) -> None:
    controller = rollout(replica, "fraud_model/r-slow", tmp_path)
    with traffic(replica, transactions) as load:
        with pytest.raises(RolloutStopped, match="model_time"):
            controller.run_all()
        after = len(load.answers)
        while len(load.answers) < after + 20 and not load.failures:
            time.sleep(0.1)  # answers go on after the rollback
    # Clients saw answers only: every call a 200, through the canary and the rollback.
    assert load.failures == []
    assert {a.status for a in load.answers} == {200}
    live = ServiceClient(replica.url, ADMIN_KEY).deployment()
    assert live["name"] == LIVE["name"]
    assert live["champion"]["package"] == "fraud_model/v1"
    assert not live.get("challengers") and not live.get("shadows")
    records = DecisionLog(tmp_path / "decisions.jsonl").read()
    kinds = [(r.kind, r.subject, r.passed) for r in records]
    assert kinds == [
        ("rollout", "shadow", True),
        ("rollout", "canary 5%", False),
        ("rollback", "deployment", True),
    ]
    canary = records[1]
    failed = {g["name"]: g for g in canary.evidence["guardrails"] if not g["passed"]}
    assert "model_time" in failed, canary.evidence
    assert failed["model_time"]["value"] > failed["model_time"]["limit"]
    assert "model_time" in records[2].message and LIVE["name"] in records[2].message


# --- the pieces, without a service ---------------------------------------------------------------


def test_composed_deployments_keep_weights_and_the_old_champion() -> None:
    live = {
        **LIVE,
        "champion": {"name": "champion", "package": "fraud_model/v1", "weight": 0.9},
        "challengers": [{"name": "control", "package": "fraud_model/v0", "weight": 0.1}],
    }
    step = with_canary(live, "fraud_model/r1", 0.25)
    weights = [step["champion"]["weight"], *(c["weight"] for c in step["challengers"])]
    assert weights == pytest.approx([0.675, 0.075, 0.25]) and sum(weights) == pytest.approx(1)
    final = promoted(live, "fraud_model/r1")
    assert final["champion"] == {"name": "champion", "package": "fraud_model/r1", "weight": 0.9}
    assert final["challengers"] == live["challengers"]
    assert [f["package"] for f in final["fallback"]] == ["fraud_model/v1", "fraud_model/rt"]
    assert json.loads(json.dumps(final)) == final


def test_histogram_quantile_and_psi() -> None:
    cumulative = {0.001: 10.0, 0.01: 98.0, 0.1: 100.0, float("inf"): 100.0}
    assert quantile(cumulative, 0.5) == 0.01
    assert quantile(cumulative, 0.99) == 0.1
    assert quantile({float("inf"): 0.0}, 0.99) is None
    same = psi(cumulative, {k: 3 * v for k, v in cumulative.items()})
    assert same == pytest.approx(0.0, abs=1e-12)
    moved = psi(cumulative, {0.001: 80.0, 0.01: 90.0, 0.1: 100.0, float("inf"): 100.0})
    assert moved is not None and moved > 0.25
