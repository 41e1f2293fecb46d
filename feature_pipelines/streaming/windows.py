"""Windowed aggregates over a declared catalogue: the maths both the consumer and replay run.

A domain declares its streaming features once, as a ``WindowCatalogue``: the entity kinds
(join key, the counterpart entity whose distinct values are counted, the Feast view, push
source and offline table each kind's rows go to) and, per kind, features of the form
"aggregate of the entity's events over ``(t - window, t]``". Aggregates: ``count``, ``sum`` of
the event's value, ``count_below`` (events whose value is below a threshold) and ``distinct``
(counterparts). Values are summed in integer units (``value_scale`` per unit, e.g. cents) so
that every writer agrees to the last bit.

Point-in-time semantics
-----------------------
The row written for event ``e`` at time ``t`` describes the windows ``(t - w, t]``: it
*includes* ``e`` and every event of the entity up to and including ``t``. It is stamped
``event_timestamp = t + n µs``, where ``n >= 1`` is the number of the entity's events at exactly
``t`` that the row counts (1 unless events tie; a later, more complete row of a tie is stamped
later, so every store keeps the complete one). Hence:

- serving reads, for the next event, a row that counts every earlier event;
- a point-in-time join for an event at ``t`` (latest row with timestamp ``<= t``) never sees
  the event's own row, nor that of another event at the same instant: training sees exactly
  what the online store held when the event was scored (given a consumer that keeps up),
  without leaking a label-bearing event into its own features;
- a row's windows end at its event: an entity quiet since its last event keeps that event's
  values until the view's TTL (the longest window) withholds them, in training and serving.

Event times are assumed to be coarser than a microsecond in practice (payment systems stamp
milliseconds), so no event falls within ``n`` µs after another one of the same entity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

import numpy as np
import pandas as pd

from feature_pipelines.schema import CREATED_TIMESTAMP, EVENT_TIMESTAMP

SECOND_US: Final = 1_000_000
MINUTE_US: Final = 60 * SECOND_US
HOUR_US: Final = 60 * MINUTE_US

Aggregate = Literal["count", "sum", "count_below", "distinct"]


@dataclass(frozen=True)
class WindowFeature:
    """One streaming feature: an aggregate of the entity's events over ``(t - window, t]``.

    ``below`` is the threshold of a ``count_below`` feature, in value units (e.g. 5.0).
    """

    name: str
    aggregate: Aggregate
    window_us: int
    below: float | None = None

    def __post_init__(self) -> None:
        if self.window_us <= 0:
            raise ValueError(f"{self.name}: the window must be positive")
        if (self.aggregate == "count_below") != (self.below is not None):
            raise ValueError(f"{self.name}: `below` goes with the count_below aggregate only")


@dataclass(frozen=True)
class StreamKind:
    """An entity kind with streaming features, and where its rows go."""

    name: str
    join_key: str
    counterpart: str  # the other entity whose distinct values are counted
    view: str
    push_source: str
    table_file: str
    features: tuple[WindowFeature, ...]

    @property
    def table(self) -> str:
        """Key of this kind's rows in a tables dict (next to batch tables such as "ip")."""
        return f"{self.name}_stream"

    @property
    def feature_names(self) -> list[str]:
        """Feature names in view order."""
        return [f.name for f in self.features]


@dataclass(frozen=True)
class WindowCatalogue:
    """Every streaming feature of a domain, and the event fields they read.

    ``id_field`` names the event's unique id (an event added twice counts once),
    ``value_field`` the number that ``sum`` and ``count_below`` read; events carry each kind's
    ``join_key`` and ``counterpart`` too, as attributes (live) or columns (replay).
    """

    kinds: tuple[StreamKind, ...]
    id_field: str
    value_field: str
    value_scale: int = 100

    def __post_init__(self) -> None:
        names = [f.name for k in self.kinds for f in k.features]
        if len(set(names)) != len(names):
            raise ValueError("a streaming feature is declared twice")
        if len({k.name for k in self.kinds}) != len(self.kinds):
            raise ValueError("an entity kind is declared twice")

    @property
    def tables(self) -> Mapping[str, StreamKind]:
        """Kinds by the key of their rows in a tables dict ("ip_stream", ...)."""
        return MappingProxyType({k.table: k for k in self.kinds})

    def kind(self, name: str) -> StreamKind:
        """The kind called ``name`` ("ip", "card", ...)."""
        for kind in self.kinds:
            if kind.name == name:
                return kind
        raise KeyError(name)

    @property
    def max_window_us(self) -> int:
        """Longest window of any feature; the streaming views' TTL matches it."""
        return max(f.window_us for k in self.kinds for f in k.features)

    def to_units(self, values: np.ndarray | float) -> np.ndarray:
        """Values as integer units (round half to even), the unit every window sum uses."""
        scaled = np.asarray(values, dtype=np.float64) * float(self.value_scale)
        return np.rint(scaled).astype(np.int64)


@dataclass(frozen=True)
class WindowEvents:
    """Events of one entity kind as arrays: entity code, time (µs), value units, counterpart."""

    entity: np.ndarray
    t_us: np.ndarray
    units: np.ndarray
    counterpart: np.ndarray


def window_features(
    catalogue: WindowCatalogue,
    kind: StreamKind,
    events: WindowEvents,
    query_entity: np.ndarray,
    query_t_us: np.ndarray,
) -> dict[str, np.ndarray]:
    """Each feature of ``kind`` for every query (entity, as-of time ``T``) over ``(T - w, T]``.

    The one implementation behind both the live consumer and replay: counts are int64, sums
    float64 (exact units / scale), distinct counts int64. Vectorized with numpy.
    """
    n_entities = int(max(events.entity.max(initial=-1), query_entity.max(initial=-1))) + 1
    out = {
        f.name: np.zeros(len(query_t_us), dtype=np.float64 if f.aggregate == "sum" else np.int64)
        for f in kind.features
    }
    if len(query_t_us) == 0 or n_entities == 0:
        return out
    longest = catalogue.max_window_us
    t0 = int(min(events.t_us.min(initial=query_t_us.min()), query_t_us.min()))
    t_end = int(max(events.t_us.max(initial=query_t_us.max()), query_t_us.max()))
    # Keys entity * span + (t - t0 + longest): each entity's times form one sorted run and
    # T - w never reaches into the previous entity's run.
    span = t_end - t0 + 2 * longest + 1
    per_chunk = max(1, (1 << 62) // span)  # entities per int64-safe chunk
    for first in range(0, n_entities, per_chunk):
        last = first + per_chunk
        ev_mask = (events.entity >= first) & (events.entity < last)
        q_idx = np.flatnonzero((query_entity >= first) & (query_entity < last))
        if len(q_idx) == 0:
            continue
        chunk = WindowEvents(
            entity=events.entity[ev_mask] - first,
            t_us=events.t_us[ev_mask] - t0 + longest,
            units=events.units[ev_mask],
            counterpart=events.counterpart[ev_mask],
        )
        q_key = (query_entity[q_idx] - first) * span + (query_t_us[q_idx] - t0 + longest)
        for name, values in _chunk_features(catalogue, kind, chunk, q_key, span).items():
            out[name][q_idx] = values
    return out


def _chunk_features(
    catalogue: WindowCatalogue,
    kind: StreamKind,
    ev: WindowEvents,
    q_key: np.ndarray,
    span: int,
) -> dict[str, np.ndarray]:
    key = ev.entity * span + ev.t_us
    order = np.argsort(key, kind="stable")
    keys = key[order]
    units = ev.units[order]
    prefix_units = np.concatenate([[0], np.cumsum(units)])
    prefix_below: dict[int, np.ndarray] = {}  # per threshold, in units
    hi = np.searchsorted(keys, q_key, side="right")
    out: dict[str, np.ndarray] = {}
    for feature in kind.features:
        if feature.aggregate == "distinct":
            out[feature.name] = _distinct(ev, span, q_key, feature.window_us)
            continue
        lo = np.searchsorted(keys, q_key - feature.window_us, side="right")
        if feature.aggregate == "count":
            out[feature.name] = (hi - lo).astype(np.int64)
        elif feature.aggregate == "sum":
            out[feature.name] = (prefix_units[hi] - prefix_units[lo]) / float(catalogue.value_scale)
        else:
            assert feature.below is not None  # checked when the feature is declared
            below = int(catalogue.to_units(feature.below))
            if below not in prefix_below:
                prefix_below[below] = np.concatenate([[0], np.cumsum(units < below)])
            prefix = prefix_below[below]
            out[feature.name] = (prefix[hi] - prefix[lo]).astype(np.int64)
    return out


def _distinct(ev: WindowEvents, span: int, q_key: np.ndarray, width: int) -> np.ndarray:
    """Distinct counterparts among the entity's events in ``(T - width, T]``.

    An occurrence at ``t`` is its value's latest at or before ``T`` and inside the window iff
    ``t <= T < min(next occurrence of the value, t + width)``; count those intervals.
    """
    order = np.lexsort((ev.t_us, ev.counterpart, ev.entity))
    e, v, t = ev.entity[order], ev.counterpart[order], ev.t_us[order]
    next_t = np.full(len(t), np.iinfo(np.int64).max, dtype=np.int64)
    same = (e[1:] == e[:-1]) & (v[1:] == v[:-1])
    next_t[:-1] = np.where(same, t[1:], next_t[:-1])
    stop = np.minimum(next_t, t + width)
    starts = np.sort(e * span + t)
    stops = np.sort(e * span + stop)
    started = np.searchsorted(starts, q_key, side="right")
    stopped = np.searchsorted(stops, q_key, side="right")
    return (started - stopped).astype(np.int64)


def _exact_ties(
    events: WindowEvents, query_entity: np.ndarray, query_t_us: np.ndarray
) -> np.ndarray:
    """How many of the entity's events happened at exactly each query time."""
    counts = pd.DataFrame({"e": events.entity, "t": events.t_us}).value_counts()
    wanted = pd.MultiIndex.from_arrays([query_entity, query_t_us], names=["e", "t"])
    return counts.reindex(wanted, fill_value=0).to_numpy(dtype=np.int64)


def feature_rows(
    catalogue: WindowCatalogue,
    kind: StreamKind,
    entity_keys: np.ndarray,
    events: WindowEvents,
    query_entity: np.ndarray,
    query_t_us: np.ndarray,
) -> pd.DataFrame:
    """Feature rows stamped ``t + n µs`` (see the module docstring), sorted by time.

    Columns: the kind's join key (``entity_keys[code]``), ``event_timestamp``,
    ``created_timestamp`` and the kind's features in view order.
    """
    values = window_features(catalogue, kind, events, query_entity, query_t_us)
    ties = np.maximum(_exact_ties(events, query_entity, query_t_us), 1)
    stamps = pd.to_datetime(query_t_us + ties, unit="us", utc=True).astype("datetime64[us, UTC]")
    frame = pd.DataFrame(
        {
            kind.join_key: entity_keys[query_entity].astype(object),
            EVENT_TIMESTAMP: stamps,
            # Deterministic, so a redelivered event's row is an exact duplicate.
            CREATED_TIMESTAMP: stamps,
            **{name: values[name] for name in kind.feature_names},
        }
    )
    # Events of one entity at one instant share their window and hence their row.
    frame = frame.drop_duplicates([kind.join_key, EVENT_TIMESTAMP], keep="last")
    return frame.sort_values([EVENT_TIMESTAMP, kind.join_key], kind="stable").reset_index(drop=True)


def event_times_us(values: pd.Series) -> np.ndarray:
    """Event times as UTC epoch microseconds (naive times are taken as UTC)."""
    stamps = pd.to_datetime(values, utc=True).dt.tz_convert(None)
    return stamps.to_numpy(dtype="datetime64[us]").astype(np.int64)
