"""What is logged per answer, and the recent-answers index explanations read first.

``AnswerLog`` is driven directly with the outcomes a scorer produces (``Scored`` rows and
``ScoredColumns``) over a real ``PredictionLog`` in a temporary folder; what it hands on is read
back from the index and from the parquet log.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from feature_repo import prediction_log as log_format
from scoring_service.core.schemas import EntityFreshness
from scoring_service.monitoring.answers import (
    AnswerLog,
    LoggedMember,
    RecentAnswers,
    ensemble_members,
    member_input_names,
)
from scoring_service.monitoring.prediction_log import LogEntry, PredictionLog
from scoring_service.stages.features import MISSING, NOT_REQUESTED, PRESENT, STALE
from scoring_service.stages.mapping import MappedRequests
from scoring_service.stages.outcomes import OFF_LOOP_ROWS, Scored, ScoredColumns

KEYS = ["card_id", "ip_address"]
NAMES = ["f1", "f2"]
DEFAULT = "fraud_model/v1"


def entry(business_id: str | None, request_id: str = "req-1", score: float = 0.5) -> LogEntry:
    return LogEntry(
        request_id=request_id,
        business_id=business_id,
        ts=datetime(2026, 11, 30, 12, tzinfo=UTC),
        domain="fraud",
        deployment="default",
        variant="champion",
        model_version=DEFAULT,
        keys={"card_id": "c", "ip_address": None},
        features=[1.0, 2.0],
        feature_names=NAMES,
        statuses={"card_id": "present", "ip_address": "not_requested"},
        age_seconds={"card_id": 1.0, "ip_address": None},
        score=score,
        label="not_fraud",
        reasons=[],
        latency_ms=1.0,
    )


def mapped(n: int) -> MappedRequests:
    return MappedRequests(
        keys={
            "card_id": [f"card_{i}" for i in range(n)],
            "ip_address": [None if i % 2 == 0 else f"198.51.100.{i}" for i in range(n)],
        },
        request_values=np.zeros((n, 1), dtype=np.float32),
    )


def answer_log(root: Path, capacity: int = 100, sample_rate: float = 1.0) -> AnswerLog:
    log = PredictionLog(root, KEYS, sample_rate=sample_rate, roll_seconds=3600)
    return AnswerLog("fraud", log, RecentAnswers(capacity), deployment="canary")


def test_the_index_keeps_the_latest_answer_per_id_and_evicts_the_oldest() -> None:
    recent = RecentAnswers(capacity=3)
    first_b = entry("b", "req-b1")
    recent.add([entry("a"), first_b, entry("c")])
    assert len(recent) == 3 and recent.get("b") is first_b
    recent.add([entry("d")])  # past capacity: the oldest, a, goes
    assert recent.get("a") is None and len(recent) == 3
    newer_b = entry("b", "req-b2", score=0.9)
    recent.add([newer_b])  # b answered again: its newer answer, now the youngest
    recent.add([entry("e")])  # c is now the oldest
    assert recent.get("c") is None
    assert recent.get("b") is newer_b and recent.get("b").score == 0.9  # type: ignore[union-attr]
    assert [recent.get(i) is not None for i in "abcde"] == [False, True, False, True, True]
    recent.add([entry(None, "req-entity")])  # an entity call: nothing to look up by
    assert len(recent) == 3


def test_rows_are_logged_as_answered_and_found_by_business_id(tmp_path: Path) -> None:
    answers = answer_log(tmp_path)
    inputs = np.array([0.25, float("nan")], dtype=np.float32)
    scored = [
        Scored(
            0.81,
            "highly_suspicious",
            ["ip_shared_by_many_cards"],
            {
                "card_id": EntityFreshness(status="present", age_seconds=12.5),
                "ip_address": EntityFreshness(status="not_requested"),
            },
            inputs=inputs,
        ),
        Scored(
            None,
            "uncertain",
            ["no_model_answer"],
            {
                "card_id": EntityFreshness(status="stale", age_seconds=90_000.0),
                "ip_address": EntityFreshness(status="missing"),
            },
            variant="twin",
            model_version="fraud_model/v1b",
        ),
    ]
    arrived = time.monotonic() - 0.25
    asyncio.run(
        answers.record(
            "req-42",
            ["tx-1", "tx-2"],
            mapped(2),
            scored,
            default_version=DEFAULT,
            feature_names=NAMES,
            arrived=arrived,
        )
    )
    first, second = answers.recent.get("tx-1"), answers.recent.get("tx-2")
    assert first is not None and second is not None
    assert (first.request_id, first.domain, first.deployment) == ("req-42", "fraud", "canary")
    assert (first.variant, first.model_version) == ("champion", DEFAULT)  # the call's default
    assert first.keys == {"card_id": "card_0", "ip_address": None}
    assert first.statuses == {"card_id": "present", "ip_address": "not_requested"}
    assert first.age_seconds == {"card_id": 12.5, "ip_address": None}
    assert (first.score, first.label, first.reasons) == (
        0.81,
        "highly_suspicious",
        ["ip_shared_by_many_cards"],
    )
    assert first.features[0] == pytest.approx(0.25) and math.isnan(first.features[1])
    assert list(first.feature_names) == NAMES
    assert first.latency_ms >= 250.0
    assert (second.variant, second.model_version) == ("twin", "fraud_model/v1b")
    assert second.keys == {"card_id": "card_1", "ip_address": "198.51.100.1"}
    assert second.statuses == {"card_id": "stale", "ip_address": "missing"}
    # No model input row kept (the outage policy's answer): no features, no names.
    assert (tuple(second.features), tuple(second.feature_names)) == ((), ())
    assert second.score is None and second.ts == first.ts


def test_columns_are_logged_with_status_names_and_no_age_for_a_missing_row(
    tmp_path: Path,
) -> None:
    answers = answer_log(tmp_path)
    matrix = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)
    columns = ScoredColumns(
        scores=[0.1, 0.5, 0.9],
        labels=["not_fraud", "suspicious", "highly_suspicious"],
        reasons=[[], ["unknown_ip_address"], ["ip_shared_by_many_cards"]],
        status={"card_id": [PRESENT, STALE, PRESENT], "ip_address": [NOT_REQUESTED, MISSING, 0]},
        age_seconds={"card_id": [5.0, 99_000.0, 7.0], "ip_address": [math.nan, math.nan, 3.0]},
        default_version="fraud_model/v2",
        inputs=matrix,
    )
    asyncio.run(
        answers.record_columns(
            "req-batch",
            ["tx-a", "tx-b", "tx-c"],
            mapped(3),
            columns,
            default_version=DEFAULT,
            feature_names=NAMES,
            arrived=time.monotonic(),
        )
    )
    a, b, c = (answers.recent.get(i) for i in ("tx-a", "tx-b", "tx-c"))
    assert a is not None and b is not None and c is not None
    assert a.statuses == {"card_id": "present", "ip_address": "not_requested"}
    assert b.statuses == {"card_id": "stale", "ip_address": "missing"}
    assert a.age_seconds == {"card_id": 5.0, "ip_address": None}
    assert c.age_seconds == {"card_id": 7.0, "ip_address": 3.0}
    # No per-row variants or versions: the champion, under the columns' default version.
    assert {(e.variant, e.model_version) for e in (a, b, c)} == {("champion", "fraud_model/v2")}
    assert [e.score for e in (a, b, c)] == [0.1, 0.5, 0.9]
    assert b.reasons == ["unknown_ip_address"] and list(c.features) == [5.0, 6.0]
    assert {e.request_id for e in (a, b, c)} == {"req-batch"}


def test_an_unsampled_call_logs_nothing(tmp_path: Path) -> None:
    answers = answer_log(tmp_path, sample_rate=0.0)
    assert not answers.sampled("req-any")
    scored = [Scored(0.2, "not_fraud", [], {"card_id": EntityFreshness(status="present")})]
    asyncio.run(
        answers.record(
            "req-any",
            ["tx-1"],
            mapped(1),
            scored,
            default_version=DEFAULT,
            feature_names=NAMES,
            arrived=time.monotonic(),
        )
    )
    assert len(answers.recent) == 0
    answers.log.start()
    answers.close()
    assert not (tmp_path / "date=2026-11-30").exists()
    assert answers.log.rows_written == 0


def test_what_is_recorded_reaches_the_parquet_log(tmp_path: Path) -> None:
    """A large call (entries built off the event loop) and a small one: every answer is in the
    log once the log is closed, and the index holds the same entries."""
    answers = answer_log(tmp_path, capacity=1_000)
    answers.log.start()
    n = OFF_LOOP_ROWS + 44
    columns = ScoredColumns(
        scores=[i / n for i in range(n)],
        labels=["not_fraud"] * n,
        reasons=[[] for _ in range(n)],
        status={"card_id": [PRESENT] * n, "ip_address": [NOT_REQUESTED] * n},
        age_seconds={"card_id": [60.0] * n, "ip_address": [math.nan] * n},
        variants=["champion"] * (n - 1) + ["twin"],
        model_versions=[DEFAULT] * (n - 1) + ["fraud_model/v1b"],
    )
    ids = [f"tx-{i}" for i in range(n)]
    asyncio.run(
        answers.record_columns(
            "req-large",
            ids,
            mapped(n),
            columns,
            default_version=DEFAULT,
            feature_names=NAMES,
            arrived=time.monotonic(),
        )
    )
    answers.close()
    table = log_format.read(tmp_path).to_pandas().sort_values(log_format.SCORE)
    assert table[log_format.BUSINESS_ID].tolist() == ids
    assert set(table[log_format.REQUEST_ID]) == {"req-large"}
    assert table["card_id"].tolist() == [f"card_{i}" for i in range(n)]
    last = table.iloc[-1]
    assert (last[log_format.VARIANT], last[log_format.MODEL_VERSION]) == ("twin", "fraud_model/v1b")
    kept = answers.recent.get("tx-7")
    assert len(answers.recent) == n and kept is not None and kept.score == 7 / n


def test_rows_decided_by_several_packages_log_each_ones_row_and_names(tmp_path: Path) -> None:
    answers = answer_log(tmp_path)
    blend = member_input_names(
        [("fraud_model/v1", 1 / 3, ["a", "b"]), ("fraud_model/v2", 2 / 3, ["a", "c", "d"])]
    )
    rows = [
        np.array([1.0, 2.0], dtype=np.float32),
        np.arange(5, dtype=np.float32),
        None,
    ]
    columns = ScoredColumns(
        scores=[0.2, 0.4, None],  # type: ignore[list-item]
        labels=["not_fraud", "suspicious", "uncertain"],
        reasons=[[], [], ["no_model_answer"]],
        status={"card_id": [PRESENT] * 3, "ip_address": [PRESENT] * 3},
        age_seconds={"card_id": [1.0] * 3, "ip_address": [1.0] * 3},
        variants=["request-only", "champion", "none"],
        model_versions=["fraud_model/rt", "ensemble:blend", ""],
        inputs=rows,
        input_names=[("x", "y"), blend, ()],
    )
    asyncio.run(
        answers.record_columns(
            "req-routed",
            ["tx-rt", "tx-blend", "tx-none"],
            mapped(3),
            columns,
            default_version=DEFAULT,
            feature_names=NAMES,
            arrived=time.monotonic(),
        )
    )
    rt, mixed, none = (answers.recent.get(i) for i in ("tx-rt", "tx-blend", "tx-none"))
    assert rt is not None and mixed is not None and none is not None
    assert (rt.model_version, list(rt.feature_names), list(rt.features)) == (
        "fraud_model/rt",
        ["x", "y"],
        [1.0, 2.0],
    )
    assert ensemble_members(rt.feature_names) is None
    members = ensemble_members(mixed.feature_names)
    assert members == [
        LoggedMember("fraud_model/v1", 1 / 3, 0, ["a", "b"]),
        LoggedMember("fraud_model/v2", 2 / 3, 2, ["a", "c", "d"]),
    ]
    assert list(mixed.features) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert (list(none.features), list(none.feature_names)) == ([], [])


def test_the_max_rule_is_logged_without_weights() -> None:
    names = member_input_names([("m/a", None, ["f"]), ("m/b", None, ["f", "g"])])
    assert ensemble_members(names) == [
        LoggedMember("m/a", None, 0, ["f"]),
        LoggedMember("m/b", None, 1, ["f", "g"]),
    ]
