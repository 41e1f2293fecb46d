"""The status rule and the assembly of online vectors (feature_repo.online)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feature_repo.layout import ViewSpec
from feature_repo.online import (
    MISSING,
    NOT_REQUESTED,
    PRESENT,
    STALE,
    StoreLayout,
    assemble,
    requested_index,
)

NOW = 1_000_000.0
NAN = math.nan


def layout(**views: ViewSpec) -> StoreLayout:
    return StoreLayout.from_views(views)


def test_requested_index_skips_absent_keys() -> None:
    assert requested_index(["a", None, "b", None]) == [0, -1, 1, -1]


def test_present_stale_missing_and_not_requested_per_view() -> None:
    one = layout(card=ViewSpec("card_id", 3600, ["a", "b"]))
    rows = [(NOW - 10, [1.0, 2.0]), (NOW - 7200, [3.0, 4.0]), (NAN, ())]
    batch = assemble(one, 4, {"card": ([0, 1, 2, -1], rows)}, NOW)
    assert batch.status["card_id"].tolist() == [PRESENT, STALE, MISSING, NOT_REQUESTED]
    np.testing.assert_array_equal(batch.values[0], [1.0, 2.0])
    # Stale values are withheld, as Feast's point-in-time join withholds them in training.
    assert np.isnan(batch.values[1:]).all()
    assert batch.age_seconds["card_id"][:2].tolist() == [10.0, 7200.0]
    assert np.isnan(batch.age_seconds["card_id"][2:]).all()
    assert batch.event_timestamp["card_id"][0] == NOW - 10


def test_null_values_of_a_present_row_are_nan() -> None:
    one = layout(card=ViewSpec("card_id", None, ["a", "b"]))
    batch = assemble(one, 1, {"card": ([0], [(NOW - 1, [None, 5.0])])}, NOW)
    assert np.isnan(batch.values[0, 0]) and batch.values[0, 1] == 5.0
    assert batch.status["card_id"][0] == PRESENT


def test_a_view_without_ttl_never_goes_stale() -> None:
    one = layout(card=ViewSpec("card_id", None, ["a"]))
    batch = assemble(one, 1, {"card": ([0], [(NOW - 10**9, [1.0])])}, NOW)
    assert batch.status["card_id"][0] == PRESENT


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ((NOW - 1, [1.0]), (NOW - 2, [2.0]), PRESENT),
        ((NOW - 1, [1.0]), (NOW - 7200, [2.0]), STALE),
        ((NAN, ()), (NOW - 7200, [2.0]), MISSING),
        ((NOW - 7200, [1.0]), (NAN, ()), MISSING),
    ],
)
def test_an_entity_takes_the_most_severe_status_of_its_evidence_views(
    first: tuple, second: tuple, expected: int
) -> None:
    two = layout(
        batch=ViewSpec("card_id", 3600, ["a"]),
        other=ViewSpec("card_id", 3600, ["b"]),
    )
    batch = assemble(two, 1, {"batch": ([0], [first]), "other": ([0], [second])}, NOW)
    assert batch.status["card_id"][0] == expected
    if expected == MISSING:
        assert np.isnan(batch.age_seconds["card_id"][0])
    else:  # the oldest row's age
        assert batch.age_seconds["card_id"][0] == max(NOW - first[0], NOW - second[0])


def test_optional_evidence_fills_columns_but_never_decides() -> None:
    mixed = layout(
        stream=ViewSpec("card_id", 3600, ["rt"], evidence=False),
        batch=ViewSpec("card_id", 86400, ["daily"]),
    )
    quiet = assemble(
        mixed, 1, {"stream": ([0], [(NAN, ())]), "batch": ([0], [(NOW - 60, [7.0])])}, NOW
    )
    assert quiet.status["card_id"][0] == PRESENT  # no streaming row: not unknown
    assert np.isnan(quiet.values[0, 0]) and quiet.values[0, 1] == 7.0
    assert np.isnan(quiet.view_age_seconds["stream"][0])
    assert quiet.view_age_seconds["batch"][0] == 60.0
    assert quiet.view_status["stream"][0] == MISSING and quiet.view_status["batch"][0] == PRESENT
    new = assemble(
        mixed, 1, {"stream": ([0], [(NOW - 5, [3.0])]), "batch": ([0], [(NAN, ())])}, NOW
    )
    assert new.status["card_id"][0] == MISSING  # fresh stream row, but no batch evidence
    assert new.values[0, 0] == 3.0


def test_an_entity_with_only_optional_views_is_decided_by_them() -> None:
    only = layout(stream=ViewSpec("ip", 3600, ["rt"], evidence=False))
    batch = assemble(only, 2, {"stream": ([0, 1], [(NAN, ()), (NOW - 1, [1.0])])}, NOW)
    assert batch.status["ip"].tolist() == [MISSING, PRESENT]


def test_repeated_entities_share_one_row() -> None:
    one = layout(card=ViewSpec("card_id", None, ["a"]))
    batch = assemble(one, 3, {"card": ([0, 0, -1], [(NOW - 1, [4.0])])}, NOW)
    assert batch.values[:2, 0].tolist() == [4.0, 4.0]
    assert batch.status["card_id"].tolist() == [PRESENT, PRESENT, NOT_REQUESTED]


def test_union_keeps_each_view_once_in_order() -> None:
    first = layout(a=ViewSpec("k", None, ["x"]), b=ViewSpec("k", None, ["y"]))
    second = layout(b=ViewSpec("k", None, ["y"]), c=ViewSpec("j", None, ["z"]))
    merged = first.union(second)
    assert [v.name for v in merged.views] == ["a", "b", "c"]
    assert [v.offset for v in merged.views] == [0, 1, 2]
