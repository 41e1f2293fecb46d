"""Online feature vectors: the model matrix and one status per entity, from raw per-view reads.

The single home of the status rule, used by every reader of the online store (the fast Redis
reader, the Feast SDK reader), by batch scoring and by the skew check:

- a feature view's row is *present* when the store has it within the view's TTL, *stale* when
  it is older (its values are then withheld as NaN, exactly as Feast's point-in-time join
  withholds them in training) and *missing* when the store has no row for the key;
- an entity's status combines its views that are evidence of it (``ViewSpec.evidence``; all of
  them when none is): the most severe wins, missing over stale over present. Its age is the
  oldest of those rows (none when it is missing). A view tagged optional evidence (streaming
  windows of a quiet entity) fills its columns when present but never makes the entity unknown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from feature_repo.layout import ViewSpec

PRESENT, MISSING, STALE, NOT_REQUESTED = 0, 1, 2, 3
STATUS_NAMES = {
    PRESENT: "present",
    MISSING: "missing",
    STALE: "stale",
    NOT_REQUESTED: "not_requested",
}
# Combining an entity's views: the higher rank wins.
_SEVERITY = {NOT_REQUESTED: 0, PRESENT: 1, STALE: 2, MISSING: 3}
NAN = math.nan


@dataclass(frozen=True)
class ViewLayout:
    """One feature view as the model reads it."""

    name: str
    join_key: str
    ttl_seconds: int | None
    features: list[str]
    offset: int  # first column of this view in the model's stored-feature block
    evidence: bool = True


@dataclass(frozen=True)
class StoreLayout:
    """All views of a model, in model order."""

    views: list[ViewLayout]

    @property
    def width(self) -> int:
        """Number of stored features."""
        return sum(len(v.features) for v in self.views)

    @property
    def join_keys(self) -> list[str]:
        """Join keys in model order, once each."""
        return list(dict.fromkeys(v.join_key for v in self.views))

    @classmethod
    def from_views(cls, views: Mapping[str, ViewSpec]) -> StoreLayout:
        """Build from {view: ViewSpec} in model order."""
        out, offset = [], 0
        for name, spec in views.items():
            out.append(
                ViewLayout(
                    name,
                    spec.join_key,
                    spec.ttl_seconds,
                    list(spec.features),
                    offset,
                    spec.evidence,
                )
            )
            offset += len(spec.features)
        return cls(out)

    def union(self, other: StoreLayout) -> StoreLayout:
        """Views of both layouts (this one's first), each view once."""
        seen = {v.name for v in self.views}
        specs = {
            v.name: ViewSpec(v.join_key, v.ttl_seconds, v.features, v.evidence)
            for v in [*self.views, *(v for v in other.views if v.name not in seen)]
        }
        return StoreLayout.from_views(specs)


@dataclass
class FeatureBatch:
    """Stored features for n requests."""

    values: np.ndarray  # float32 [n, width], NaN where missing or stale
    status: dict[str, np.ndarray] = field(default_factory=dict)  # join key -> int8 [n]
    age_seconds: dict[str, np.ndarray] = field(default_factory=dict)  # join key -> float64 [n]
    # join key -> event time in epoch seconds, float64 [n]; NaN when missing or not requested
    event_timestamp: dict[str, np.ndarray] = field(default_factory=dict)
    # view -> age in seconds of each row read, float64 [n]; NaN when missing or not requested
    view_age_seconds: dict[str, np.ndarray] = field(default_factory=dict)
    # view -> status of each row read, int8 [n] (the per-view rule, before entities combine)
    view_status: dict[str, np.ndarray] = field(default_factory=dict)

    def rows(self, index: np.ndarray) -> FeatureBatch:
        """The batch of the given rows only (copies, in ``index`` order)."""

        def pick(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {name: column[index] for name, column in columns.items()}

        return FeatureBatch(
            values=self.values[index],
            status=pick(self.status),
            age_seconds=pick(self.age_seconds),
            event_timestamp=pick(self.event_timestamp),
            view_age_seconds=pick(self.view_age_seconds),
            view_status=pick(self.view_status),
        )


# A decoded row: (event time in epoch seconds, NaN when the store has no row; values in view order)
Row = tuple[float, Sequence[float]]


def requested_index(keys: Sequence[str | None]) -> list[int]:
    """Slot of each request among the requested keys, -1 where the key is absent."""
    out, slot = [], 0
    for key in keys:
        if key is None:
            out.append(-1)
        else:
            out.append(slot)
            slot += 1
    return out


def assemble(
    layout: StoreLayout,
    n: int,
    reads: Mapping[str, tuple[Sequence[int], Sequence[Row]]],
    now: float,
) -> FeatureBatch:
    """The model matrix, statuses, ages and event times for n requests.

    ``reads`` maps view name -> (slot of each request into the rows, -1 when the request did
    not carry the view's key; the decoded rows). Views absent from ``reads`` are not requested.
    Plain lists until the end: micro-batches are small, and numpy's per-call overhead would cost
    more than the loops.
    """
    total = layout.width
    flat = [NAN] * (n * total)
    view_status: dict[str, list[int]] = {}
    view_age: dict[str, list[float]] = {}
    view_event: dict[str, list[float]] = {}
    for view in layout.views:
        status = [NOT_REQUESTED] * n
        age = [NAN] * n
        event = [NAN] * n
        index, rows = reads.get(view.name, ((), ()))
        width, offset, ttl = len(view.features), view.offset, view.ttl_seconds
        for i, slot in enumerate(index):
            if slot < 0:
                continue
            stamp, row = rows[slot]
            if stamp != stamp:  # NaN: no row for this entity
                status[i] = MISSING
                continue
            event[i] = stamp
            age[i] = row_age = now - stamp
            if ttl is not None and row_age > ttl:
                status[i] = STALE
                continue
            status[i] = PRESENT
            at = i * total + offset
            flat[at : at + width] = [NAN if v is None else v for v in row]
        view_status[view.name], view_age[view.name] = status, age
        view_event[view.name] = event
    batch = FeatureBatch(values=np.array(flat, dtype=np.float32).reshape(n, total))
    for key in layout.join_keys:
        views = [v for v in layout.views if v.join_key == key]
        deciding = [v.name for v in views if v.evidence] or [v.name for v in views]
        status, age, event = _combine(deciding, view_status, view_age, view_event, n)
        batch.status[key] = np.array(status, dtype=np.int8)
        batch.age_seconds[key] = np.array(age)
        batch.event_timestamp[key] = np.array(event)
    batch.view_age_seconds = {name: np.array(age) for name, age in view_age.items()}
    batch.view_status = {name: np.array(st, dtype=np.int8) for name, st in view_status.items()}
    return batch


# A view's reads as arrays: (slot of each request, -1 when absent; event time in epoch seconds of
# each row read, NaN when the store has no row; the rows' values, [rows, view width])
ColumnRead = tuple[np.ndarray | Sequence[int], np.ndarray, np.ndarray]
_SEVERITY_OF = np.array([_SEVERITY[s] for s in range(len(_SEVERITY))], dtype=np.int8)
_BY_SEVERITY = np.array(sorted(_SEVERITY, key=_SEVERITY.__getitem__), dtype=np.int8)


def assemble_columns(
    layout: StoreLayout,
    n: int,
    reads: Mapping[str, ColumnRead],
    now: float,
) -> FeatureBatch:
    """``assemble`` for reads already decoded into arrays, with array operations: the same
    matrix, statuses, ages and event times (a large batch's path)."""
    total = layout.width
    values = np.full((n, total), NAN, dtype=np.float32)
    view_status: dict[str, np.ndarray] = {}
    view_age: dict[str, np.ndarray] = {}
    view_event: dict[str, np.ndarray] = {}
    for view in layout.views:
        status = np.full(n, NOT_REQUESTED, dtype=np.int8)
        age = np.full(n, NAN)
        event = np.full(n, NAN)
        read = reads.get(view.name)
        if read is not None and n:
            slots, stamps, rows = read
            index = np.asarray(slots, dtype=np.int64)
            requested = np.flatnonzero(index >= 0)
            slot = index[requested]
            stamp = np.asarray(stamps, dtype=np.float64)[slot]
            found = ~np.isnan(stamp)
            status[requested[~found]] = MISSING
            at, slot, stamp = requested[found], slot[found], stamp[found]
            event[at] = stamp
            age[at] = row_age = now - stamp
            fresh = (
                np.ones(len(at), dtype=bool)
                if view.ttl_seconds is None
                else row_age <= view.ttl_seconds
            )
            status[at[~fresh]] = STALE
            status[at[fresh]] = PRESENT
            width, offset = len(view.features), view.offset
            values[at[fresh], offset : offset + width] = np.asarray(rows)[slot[fresh]]
        view_status[view.name], view_age[view.name], view_event[view.name] = status, age, event
    batch = FeatureBatch(values=values)
    for key in layout.join_keys:
        views = [v for v in layout.views if v.join_key == key]
        deciding = [v.name for v in views if v.evidence] or [v.name for v in views]
        status, age, event = _combine_columns(deciding, view_status, view_age, view_event)
        batch.status[key], batch.age_seconds[key], batch.event_timestamp[key] = status, age, event
    batch.view_age_seconds = view_age
    batch.view_status = view_status
    return batch


def _combine_columns(
    names: list[str],
    status: dict[str, np.ndarray],
    age: dict[str, np.ndarray],
    event: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_combine`` over arrays: the most severe status, the oldest row's age and event time
    (the first view's among equally old ones), none when the entity is missing."""
    if len(names) == 1:
        name = names[0]
        return status[name].copy(), age[name].copy(), event[name].copy()
    worst = np.max([_SEVERITY_OF[status[name]] for name in names], axis=0)
    out_status = _BY_SEVERITY[worst]
    out_age = np.full(len(out_status), NAN)
    out_event = np.full(len(out_status), NAN)
    for name in names:
        a = age[name]
        with np.errstate(invalid="ignore"):
            older = ~np.isnan(a) & ~(out_age >= a)
        out_age[older], out_event[older] = a[older], event[name][older]
    missing = out_status == MISSING
    out_age[missing], out_event[missing] = NAN, NAN
    return out_status, out_age, out_event


def _combine(
    names: list[str],
    status: dict[str, list[int]],
    age: dict[str, list[float]],
    event: dict[str, list[float]],
    n: int,
) -> tuple[list[int], list[float], list[float]]:
    """One entity's status, age and event time from its deciding views (most severe wins)."""
    if len(names) == 1:
        name = names[0]
        return status[name], age[name], event[name]
    out_status, out_age, out_event = [NOT_REQUESTED] * n, [NAN] * n, [NAN] * n
    for i in range(n):
        worst = NOT_REQUESTED
        for name in names:
            s = status[name][i]
            if _SEVERITY[s] > _SEVERITY[worst]:
                worst = s
            a = age[name][i]
            if a == a and not (out_age[i] >= a):  # the oldest row's age and event time
                out_age[i], out_event[i] = a, event[name][i]
        out_status[i] = worst
        if worst == MISSING:  # no row decides the entity's age
            out_age[i], out_event[i] = NAN, NAN
    return out_status, out_age, out_event
