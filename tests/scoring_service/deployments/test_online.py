"""The online learner: learns matured labels only, from the prediction log's vectors, and comes
back from its sealed snapshot scoring exactly as before (River, a real log on disk)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from feature_repo import prediction_log as plog
from scoring_service.deployments.online import (
    DESCRIPTION_FILE,
    KIND,
    STATE_FILE,
    LabelEvent,
    OnlineLearner,
    OnlineLearnerError,
    log_answers,
)

NAMES = ["amount", "card_txn_count_1h", "ip_distinct_cards_10m"]
T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def _vectors(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Rows and labels: positives have high values of the first two features."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    x = rng.normal(0.0, 1.0, (n, len(NAMES))) + np.outer(y, [2.0, 1.5, 0.0])
    x[rng.random(n) < 0.05, 2] = np.nan  # missing values are left out of a row
    return x.astype(np.float32), y


def _write_log(root: Path, ids: list[str], x: np.ndarray, at: datetime) -> None:
    n = len(ids)
    table = pa.Table.from_pydict(
        {
            plog.REQUEST_ID: [f"r{i}" for i in range(n)],
            plog.BUSINESS_ID: ids,
            plog.TS: [at + timedelta(seconds=i) for i in range(n)],
            plog.DOMAIN: ["fraud"] * n,
            plog.DEPLOYMENT: ["default"] * n,
            plog.VARIANT: ["champion"] * n,
            plog.MODEL_VERSION: ["fraud_model/v1"] * n,
            "card_id": ["c1"] * n,
            plog.FEATURES: [list(map(float, row)) for row in x],
            plog.FEATURE_NAMES: [NAMES] * n,
            plog.STATUSES: [[("card_id", "present")]] * n,
            plog.AGE_SECONDS: [[("card_id", 1.0)]] * n,
            plog.SCORE: [0.1] * n,
            plog.LABEL: ["not_fraud"] * n,
            plog.REASONS: [[]] * n,
            plog.LATENCY_MS: [1.0] * n,
        },
        schema=plog.schema(["card_id"]),
    )
    plog.write(root, table, "answers")


def _learner(**kwargs) -> OnlineLearner:
    return OnlineLearner(NAMES, base_package="fraud_model/v1", **kwargs)


def test_a_label_planted_before_it_matured_is_learned_only_once_it_has(tmp_path: Path) -> None:
    x, y = _vectors(50)
    ids = [f"tx_{i}" for i in range(50)]
    _write_log(tmp_path / "log", ids, x, T0)
    answers = log_answers(tmp_path / "log")
    learner = _learner()
    matured = [LabelEvent(ids[i], int(y[i]), T0 + timedelta(hours=1)) for i in range(40)]
    learner.offer(matured)
    assert learner.learn_matured(answers, now=T0 + timedelta(hours=2)) == 40
    before = learner.predict(x)
    # A label arrives early: its answer is logged, but it matures only in 30 days.
    planted = LabelEvent(ids[45], 1, T0 + timedelta(days=30))
    assert learner.offer([planted]) == 1
    for now in (T0 + timedelta(hours=3), T0 + timedelta(days=29, hours=23)):
        assert learner.learn_matured(answers, now=now) == 0
        assert np.array_equal(learner.predict(x), before)  # it learned nothing
        assert ids[45] in learner.pending
    assert learner.learn_matured(answers, now=planted.matured_at) == 1
    assert not np.array_equal(learner.predict(x), before)
    assert learner.labels_learned == 41 and not learner.pending
    # Learned once: the same label again is not taken.
    assert learner.offer([planted]) == 0


def test_a_label_without_a_logged_answer_waits_for_one(tmp_path: Path) -> None:
    x, _ = _vectors(3)
    learner = _learner()
    learner.offer([LabelEvent("tx_late", 1, T0)])
    answers = log_answers(tmp_path / "log")
    assert learner.learn_matured(answers, now=T0 + timedelta(days=1)) == 0  # no log yet
    _write_log(tmp_path / "log", ["tx_late"], x[:1], T0 + timedelta(hours=2))
    # Logged after the label matured: not what serving saw when the label was known.
    assert learner.learn_matured(answers, now=T0 + timedelta(days=1)) == 0
    learner.offer([LabelEvent("tx_late", 1, T0 + timedelta(hours=3))])
    assert learner.learn_matured(answers, now=T0 + timedelta(days=1)) == 1


def test_restored_from_its_snapshot_it_scores_the_same(tmp_path: Path) -> None:
    x, y = _vectors(300)
    ids = [f"tx_{i}" for i in range(300)]
    _write_log(tmp_path / "log", ids, x, T0)
    learner = _learner(snapshot_every=100)
    learner.offer(LabelEvent(ids[i], int(y[i]), T0 + timedelta(hours=1)) for i in range(250))
    packages = tmp_path / "packages"
    learned = learner.learn_matured(
        log_answers(tmp_path / "log"),
        now=T0 + timedelta(days=1),
        snapshot_root=packages,
        name="fraud_online",
    )
    assert learned == 250
    assert sorted(p.name for p in (packages / "fraud_online").iterdir()) == ["v1", "v2"]
    path = learner.snapshot(packages, "fraud_online")
    assert path.name == "v3"
    description = json.loads((path / DESCRIPTION_FILE).read_text())
    assert description["kind"] == KIND and description["labels_learned"] == 250
    restored = OnlineLearner.restore(packages, "fraud_online")
    assert restored is not None and restored.version == 3
    assert np.array_equal(restored.predict(x), learner.predict(x))
    # It learns on from where it was, as the original does.
    more = [LabelEvent(ids[i], int(y[i]), T0 + timedelta(hours=1)) for i in range(250, 300)]
    for one in (learner, restored):
        one.offer(more)
        one.learn_matured(log_answers(tmp_path / "log"), now=T0 + timedelta(days=1))
    assert np.array_equal(restored.predict(x), learner.predict(x))
    # It separates the labels it learned (a sanity check of the model, not a threshold test).
    scores = restored.predict(x)
    assert scores[y == 1].mean() > scores[y == 0].mean()


def test_a_changed_snapshot_is_refused(tmp_path: Path) -> None:
    learner = _learner()
    path = learner.snapshot(tmp_path, "fraud_online")
    (path / STATE_FILE).write_bytes((path / STATE_FILE).read_bytes() + b"\0")
    with pytest.raises(OnlineLearnerError, match="changed after it was sealed"):
        OnlineLearner.restore(tmp_path, "fraud_online")
    assert OnlineLearner.restore(tmp_path, "nothing_here") is None


def test_a_label_other_than_0_or_1_is_refused() -> None:
    with pytest.raises(OnlineLearnerError, match="not 0 or 1"):
        _learner().offer([LabelEvent("tx_1", 2, T0)])
