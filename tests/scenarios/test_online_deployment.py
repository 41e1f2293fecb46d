"""An online learner in a deployment, through a real service process and the real
``online-learn`` command: the learner answers its share as a challenger and is compared as a
shadow beside the batch champion; it learns the matured labels of the answers the service logged
(never a label that has not matured), and the service picks its next sealed snapshot up while
running; a snapshot that fails its seal is refused and the one in use keeps answering.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
import yaml

from feature_repo import clock
from feature_repo import prediction_log as plog
from models.package import package_dir, read_manifest
from models.package.online import STATE_FILE, LabelEvent, LoggedAnswer, OnlineLearner
from scoring_service.core.security import hash_key
from tests.conftest import ROOT
from tests.fixtures import service
from tests.fixtures.service import (
    ANALYST_HEADERS,
    ANALYST_KEY,
    API_HEADERS,
    as_request,
    launch_replica,
)

pytestmark = pytest.mark.slow

deployment_packages = service.deployment_packages

LEARNER = "fraud_online"
BASE = "fraud_model/v1"
DEPLOYMENT = {
    "name": "v1 champion, online learner as challenger and shadow",
    "sticky_field": "card_id",
    "salt": "online-salt",
    "champion": {"name": "champion", "package": BASE, "weight": 0.5},
    "challengers": [{"name": "learner", "online": LEARNER, "weight": 0.5}],
    "shadows": [{"name": "learner-shadow", "online": LEARNER}],
}
PICKUP_S = 60.0  # the service looks for a newer snapshot every few seconds


@pytest.fixture(scope="module")
def online_root(deployment_packages: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deployment's packages, and a learner's first snapshot taught a few planted rows."""
    root = tmp_path_factory.mktemp("online_models")
    (root / "fraud_model").symlink_to(deployment_packages / "fraud_model")
    names = read_manifest(package_dir(root, *BASE.split("/"))).features
    rng = np.random.default_rng(5)
    vectors = {f"seed_{i}": rng.normal(0.0, 1.0, len(names)) for i in range(50)}
    at = clock.now() - timedelta(days=2)
    learner = OnlineLearner(names, base_package=BASE)
    learner.offer(LabelEvent(b, int(v[0] > 0), at) for b, v in vectors.items())
    lookup = {b: LoggedAnswer(list(v), names, at - timedelta(days=1)) for b, v in vectors.items()}
    assert learner.learn_matured(lambda ids: {i: lookup[i] for i in ids}) == 50
    learner.snapshot(root, LEARNER)
    return root


@pytest.fixture(scope="module")
def replica(sqlite_repo: Path, online_root: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("online_deployment")
    file = folder / "deployment.yaml"
    file.write_text(yaml.safe_dump(DEPLOYMENT, sort_keys=False))
    started = launch_replica(
        sqlite_repo,
        sqlite_repo / "feature_store.yaml",
        online_root,
        folder,
        deployment=str(file),
        prediction_log_dir=str(folder / "log"),
        prediction_log_roll_seconds="1",
        env={"SCORING_ANALYST_KEY_HASHES": hash_key(ANALYST_KEY)},
    )
    started.wait_ready()
    try:
        yield started, folder
    finally:
        started.stop()


def score(url: str, bodies: list[dict]) -> list[dict]:
    with httpx.Client(base_url=url, timeout=30.0) as client:
        out = []
        for body in bodies:
            response = client.post("/v1/transactions/score", json=body, headers=API_HEADERS)
            assert response.status_code == 200, response.text
            out.append(response.json())
        return out


@pytest.fixture(scope="module")
def bodies(recent: pd.DataFrame) -> list[dict]:
    return [
        {**as_request(row), "transaction_id": f"tx_online_{i}"}
        for i, (_, row) in enumerate(recent.tail(60).iterrows())
    ]


def test_the_learner_answers_its_share_and_names_its_snapshot(replica, bodies) -> None:
    started, _ = replica
    answers = score(started.url, bodies)
    by_variant = {a["variant"] for a in answers}
    assert by_variant == {"champion", "learner"}, by_variant
    for answer in answers:
        if answer["variant"] == "learner":
            assert answer["model_version"] == f"{LEARNER}/v1"
            assert 0.0 <= answer["score"] <= 1.0
    again = score(started.url, bodies)
    assert [a["score"] for a in again] == [a["score"] for a in answers]
    metrics = httpx.get(f"{started.url}/metrics", timeout=10.0).text
    assert 'variant="learner-shadow"' in metrics  # compared with every answer as a shadow


def test_a_learner_answer_is_explained_by_its_snapshot(replica, bodies) -> None:
    started, _ = replica
    answers = score(started.url, bodies)
    chosen = next((b, a) for b, a in zip(bodies, answers, strict=True) if a["variant"] == "learner")
    response = httpx.get(
        f"{started.url}/v1/transactions/{chosen[0]['transaction_id']}/explanation",
        params={"top": 200},
        headers=ANALYST_HEADERS,
        timeout=60.0,
    )
    assert response.status_code == 200, response.text
    explained = response.json()
    assert explained["model_version"] == chosen[1]["model_version"]
    total = explained["expected_value"] + sum(c["contribution"] for c in explained["contributions"])
    assert total == pytest.approx(explained["raw_score"], abs=1e-6)
    # The logged row is the one the snapshot scored: its log-odds give back the answered score.
    assert 1.0 / (1.0 + math.exp(-explained["raw_score"])) == pytest.approx(
        chosen[1]["score"], abs=1e-6
    )


def _logged(log: Path, n: int) -> None:
    deadline = time.monotonic() + PICKUP_S
    while time.monotonic() < deadline:
        try:
            if plog.read(log, columns=[plog.BUSINESS_ID]).num_rows >= n:
                return
        except (FileNotFoundError, OSError, ValueError):  # no parquet file written yet
            pass
        time.sleep(0.5)
    pytest.fail(f"the prediction log under {log} did not reach {n} rows")


def _version_answering(url: str, bodies: list[dict]) -> str:
    learner = [a for a in score(url, bodies) if a["variant"] == "learner"]
    return learner[0]["model_version"]


def test_it_learns_matured_labels_only_and_is_picked_up_while_serving(
    replica, bodies, sqlite_repo: Path, online_root: Path
) -> None:
    model_root = online_root
    started, folder = replica
    score(started.url, bodies)  # at least once, whatever ran before
    log = folder / "log" / "fraud"
    _logged(log, len(bodies))
    now = clock.now()
    matured = bodies[:40]
    labels = pd.DataFrame(
        {
            "transaction_id": [b["transaction_id"] for b in bodies] + ["tx_never_answered"],
            "is_fraud": [i % 2 for i in range(len(bodies))] + [1],
            # 40 known since just after their answers were logged; 20 known only tomorrow; one
            # without an answer in the log.
            "label_available_at": [now] * len(matured)
            + [now + timedelta(days=1)] * (len(bodies) - len(matured))
            + [now],
        }
    )
    labels_file = folder / "labels.parquet"
    labels.to_parquet(labels_file)
    env = {
        **os.environ,
        "SCORING_FEATURE_REPO": str(sqlite_repo),
        "SCORING_MODEL_ROOT": str(model_root),
        "FEAST_USAGE": "False",
    }
    command = [sys.executable, "-m", "scoring_service", "online-learn", "--name", LEARNER]
    command += ["--labels", str(labels_file), "--log", str(log)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "40 labels learned this pass (90 in all, 21 waiting" in done.stdout, done.stdout
    assert (model_root / LEARNER / "v2").is_dir()
    # The log keeps the business ids it joins on, and pseudonymizes the entities.
    first = plog.read(log, where=pc.field(plog.BUSINESS_ID) == bodies[0]["transaction_id"])
    assert first.num_rows >= 1
    assert bodies[0]["card_id"] not in first.column("card_id").to_pylist()

    deadline = time.monotonic() + PICKUP_S
    while _version_answering(started.url, bodies) != f"{LEARNER}/v2":
        assert time.monotonic() < deadline, "the service never answered with snapshot v2"
        time.sleep(1.0)

    # A third snapshot whose state was changed after sealing: refused, v2 keeps answering.
    v2 = OnlineLearner.restore(model_root, LEARNER)
    assert v2 is not None and v2.labels_learned == 90
    tampered = v2.snapshot(model_root, LEARNER)
    state = tampered / STATE_FILE
    state.write_bytes(state.read_bytes() + b"\0")
    time.sleep(12.0)  # two refresh periods and more
    assert _version_answering(started.url, bodies) == f"{LEARNER}/v2"
    assert "newer snapshot refused" in started.logs()
