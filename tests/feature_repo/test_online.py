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
    assemble_columns,
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


def _random_reads(
    rng: np.random.Generator, shape: StoreLayout, n: int
) -> dict[str, tuple[list[int], list[tuple[float, list[float]]]]]:
    """Per view: slots (absent, repeated) into rows that are present, stale, missing or null."""
    reads = {}
    for view in shape.views:
        if rng.random() < 0.15:
            continue  # a view not requested at all
        m = max(1, n // 3)
        rows = []
        for _ in range(m):
            if rng.random() < 0.2:
                rows.append((NAN, ()))
            else:
                values = rng.normal(size=len(view.features)).tolist()
                values = [None if rng.random() < 0.1 else v for v in values]
                rows.append((NOW - float(rng.choice([0.5, 60, 3599, 3600, 3601, 10**6])), values))
        slots = [int(s) if rng.random() > 0.1 else -1 for s in rng.integers(0, m, n)]
        reads[view.name] = (slots, rows)
    return reads


def _as_columns(shape: StoreLayout, reads: dict) -> dict:
    columns = {}
    for view in shape.views:
        if view.name not in reads:
            continue
        slots, rows = reads[view.name]
        values = np.full((len(rows), len(view.features)), NAN)
        for i, (stamp, row) in enumerate(rows):
            if stamp == stamp:
                values[i] = [NAN if v is None else v for v in row]
        columns[view.name] = (np.array(slots), np.array([s for s, _ in rows]), values)
    return columns


@pytest.mark.parametrize("n", [0, 1, 7, 500])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_assemble_columns_equals_assemble(n: int, seed: int) -> None:
    """The array path gives the same matrix, statuses, ages and event times as the list path,
    with entities decided by several views, optional evidence and views without a TTL."""
    shape = layout(
        card=ViewSpec("card_id", 3600, ["a", "b"]),
        card_stream=ViewSpec("card_id", 600, ["c"], evidence=False),
        ip=ViewSpec("ip_address", None, ["d", "e", "f"]),
        ip_more=ViewSpec("ip_address", 3600, ["g"]),
        merchant_stream=ViewSpec("merchant_id", 3600, ["h"], evidence=False),
    )
    reads = _random_reads(np.random.default_rng(seed), shape, n)
    rows = assemble(shape, n, reads, NOW)
    columns = assemble_columns(shape, n, _as_columns(shape, reads), NOW)
    np.testing.assert_array_equal(columns.values, rows.values)
    assert columns.values.dtype == rows.values.dtype
    for name in ("status", "age_seconds", "event_timestamp", "view_age_seconds", "view_status"):
        got, expected = getattr(columns, name), getattr(rows, name)
        assert list(got) == list(expected), name
        for key in expected:
            assert got[key].dtype == expected[key].dtype, (name, key)
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name} {key}")
