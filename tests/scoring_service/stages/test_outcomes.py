"""What scoring produces: ``ScoredColumns`` (a batch, column by column) gives each request the
freshness, variant and version its ``Scored`` row has; ages are rounded to the millisecond, a
missing row has none, and equal (status, age) pairs share one built value."""

from __future__ import annotations

import math

import numpy as np

from scoring_service.core.schemas import EntityFreshness
from scoring_service.stages.features import MISSING, NOT_REQUESTED, PRESENT, STALE
from scoring_service.stages.outcomes import Scored, ScoredColumns


def columns(**changes: object) -> ScoredColumns:
    fields: dict = {
        "scores": [0.1, 0.6, 0.6],
        "labels": ["not_fraud", "suspicious", "suspicious"],
        "reasons": [[], ["unknown_ip_address"], []],
        "status": {"card_id": [PRESENT, STALE, PRESENT], "ip_address": [PRESENT, MISSING, 0]},
        "age_seconds": {
            "card_id": [3600.0004, 99_000.0, 3600.0004],
            "ip_address": [1.5, math.nan, 1.5],
        },
        "default_version": "fraud_model/v1",
        **changes,
    }
    return ScoredColumns(**fields)


def test_freshness_per_request_with_ages_to_the_millisecond() -> None:
    made: list[tuple[int, float | None]] = []

    def make(status: int, age: float | None) -> tuple[int, float | None]:
        made.append((status, age))
        return (status, age)

    rows = columns().freshness(make)
    assert rows == [
        {"card_id": (PRESENT, 3600.0), "ip_address": (PRESENT, 1.5)},
        {"card_id": (STALE, 99_000.0), "ip_address": (MISSING, None)},
        {"card_id": (PRESENT, 3600.0), "ip_address": (PRESENT, 1.5)},
    ]
    # One value per distinct (status, age) pair, shared by the rows that have it.
    assert sorted(made, key=str) == sorted(
        [(PRESENT, 3600.0), (PRESENT, 1.5), (STALE, 99_000.0), (MISSING, None)], key=str
    )
    assert rows[0]["card_id"] is rows[2]["card_id"]


def test_rows_are_the_champions_under_the_default_version_unless_told() -> None:
    inputs = np.arange(6, dtype=np.float32).reshape(3, 2)
    rows = columns(inputs=inputs).rows()
    assert len(rows) == 3 and len(columns()) == 3
    first = rows[0]
    assert isinstance(first, Scored)
    assert (first.score, first.label, first.reasons) == (0.1, "not_fraud", [])
    assert (first.variant, first.model_version) == ("champion", "fraud_model/v1")
    assert first.freshness == {
        "card_id": EntityFreshness(status="present", age_seconds=3600.0),
        "ip_address": EntityFreshness(status="present", age_seconds=1.5),
    }
    assert rows[1].freshness["ip_address"] == EntityFreshness(status="missing", age_seconds=None)
    np.testing.assert_array_equal(rows[2].inputs, [4.0, 5.0])

    routed = columns(
        variants=["champion", "canary", "fallback"],
        model_versions=["fraud_model/v1", "fraud_model/v2", "fraud_model/rt"],
    ).rows()
    assert [(r.variant, r.model_version) for r in routed] == [
        ("champion", "fraud_model/v1"),
        ("canary", "fraud_model/v2"),
        ("fallback", "fraud_model/rt"),
    ]
    assert all(r.inputs is None for r in routed)


def test_an_entity_not_requested_has_no_age() -> None:
    (row,) = ScoredColumns(
        scores=[0.2],
        labels=["not_fraud"],
        reasons=[[]],
        status={"merchant_id": [NOT_REQUESTED]},
        age_seconds={"merchant_id": [math.nan]},
    ).rows()
    assert row.freshness == {"merchant_id": EntityFreshness(status="not_requested")}
    assert row.model_version == ""  # no default: the route fills in the scorer's
