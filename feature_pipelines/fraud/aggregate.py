"""Batch features per entity (ip, card, merchant): the offline sources of the Feast feature views.

Snapshot semantics
------------------
Features are published as hourly snapshots. An entity gets a snapshot row at hour boundary
``H`` (``event_timestamp = created_timestamp = H``, UTC) for every hour ``[H - 1h, H)`` in which
it had a transaction; ip and merchant snapshots are also emitted for every hour in which one of
their labels matured, so that chargeback-based features update without new traffic.

A snapshot at ``H`` aggregates only what was known strictly before ``H``:

- transaction features use events with ``event_timestamp`` in ``[H - window, H)``;
- label features use labels with ``label_available_at`` in ``[H - 30d, H)``, i.e. matured
  before ``H``; ``*_chargeback_count_30d`` counts matured fraud and ``*_fraud_rate_30d`` is
  matured fraud over all matured labels in that window (0.0 when there are none).

A point-in-time join picks, for a transaction at time ``t``, the latest snapshot with
``H <= t``; that snapshot never includes the transaction itself nor anything after it, so
training features match what the online store held when the transaction was scored. A
transaction at exactly ``H`` falls into the snapshot at ``H + 1h``.

Snapshots later than ``end`` are dropped: they are not known yet. ``end`` defaults to the hour
after the hour of the latest event, so the last event is covered by a snapshot.

Implementation: timestamps are floored to whole seconds, which is exact for comparisons against
hour boundaries. Items of one entity type are sorted by ``entity * span + time``, so any
entity's time window is one contiguous slice found with ``searchsorted``; sums come from prefix
sums, maxima from a sparse table, and distinct counts from "latest occurrence" intervals.
Everything is vectorized numpy; there is no per-entity Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from feature_pipelines.fraud import schema

_HOUR = 3_600
_DAY = 24 * _HOUR
_LABEL_WINDOW = 30 * _DAY
_NS_PER_S = 1_000_000_000

REQUIRED_COLUMNS: list[str] = [
    schema.EVENT_TIMESTAMP,
    schema.AMOUNT,
    schema.IP_ADDRESS,
    schema.CARD_ID,
    schema.MERCHANT_ID,
    schema.IP_COUNTRY,
    schema.IS_FRAUD,
    schema.LABEL_AVAILABLE_AT,
]


@dataclass(frozen=True)
class _Events:
    """Transactions as plain arrays; times in seconds since ``base`` (an hour boundary)."""

    base: int
    span: int  # exclusive upper bound of every relative time used in a sort key
    end: int
    t: np.ndarray
    label_t: np.ndarray
    amount: np.ndarray
    is_fraud: np.ndarray


@dataclass(frozen=True)
class _Snapshots:
    """Snapshot rows of one entity type: entity code and relative hour boundary."""

    entity: np.ndarray
    t: np.ndarray


class _Timeline:
    """Items sorted by (entity, time): an entity's time window is one contiguous slice."""

    def __init__(self, entity: np.ndarray, time: np.ndarray, span: int) -> None:
        key = entity * span + time
        self.order = np.argsort(key, kind="stable")
        self.keys = key[self.order]
        self.span = span

    def window(self, snaps: _Snapshots, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``[lo, hi)`` of each snapshot's entity with time in ``[H - width, H)``."""
        offset = snaps.entity * self.span
        lo = np.searchsorted(self.keys, offset + snaps.t - width, side="left")
        hi = np.searchsorted(self.keys, offset + snaps.t, side="left")
        return lo, hi

    def prefix(self, values: np.ndarray) -> np.ndarray:
        """Prefix sums of ``values`` in timeline order, with a leading zero."""
        ordered = values[self.order]
        return np.concatenate([np.zeros(1, dtype=ordered.dtype), np.cumsum(ordered)])

    def range_max(self, values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Maximum of ``values`` over each slice ``[lo, hi)``; 0.0 for empty slices."""
        out = np.zeros(len(lo), dtype=np.float64)
        length = hi - lo
        nonempty = length > 0
        if not nonempty.any():
            return out
        # Sparse table: level k holds the max over 2**k consecutive items, so any slice is
        # covered by two (overlapping) blocks of the largest power of two that fits.
        level = np.zeros(len(lo), dtype=np.int64)
        level[nonempty] = np.floor(np.log2(length[nonempty])).astype(np.int64)
        table = [values[self.order].astype(np.float64)]
        for k in range(1, int(level.max()) + 1):
            prev, half = table[-1], 1 << (k - 1)
            table.append(np.maximum(prev[:-half], prev[half:]))
        for k in np.unique(level[nonempty]):
            rows = np.flatnonzero(nonempty & (level == k))
            block = table[k]
            out[rows] = np.maximum(block[lo[rows]], block[hi[rows] - (1 << k)])
        return out


def _epoch_seconds(values: pd.Series) -> np.ndarray:
    """Whole UTC seconds since the epoch (floored); naive timestamps are taken as UTC."""
    ts = pd.to_datetime(values, utc=True).dt.tz_convert(None)
    return ts.to_numpy(dtype="datetime64[ns]").view(np.int64) // _NS_PER_S


def _end_seconds(end: datetime | pd.Timestamp) -> int:
    stamp = pd.Timestamp(end)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.value // _NS_PER_S


def _prepare(transactions: pd.DataFrame, end: datetime | None) -> _Events:
    missing = [c for c in REQUIRED_COLUMNS if c not in transactions.columns]
    if missing:
        raise ValueError(f"transactions lack columns: {missing}")
    nulls = [c for c in REQUIRED_COLUMNS if transactions[c].isna().any()]
    if nulls:
        raise ValueError(f"transactions have nulls in: {nulls}")
    t = _epoch_seconds(transactions[schema.EVENT_TIMESTAMP])
    label_t = _epoch_seconds(transactions[schema.LABEL_AVAILABLE_AT])
    if len(t) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Events(base=0, span=1, end=0, t=t, label_t=label_t, amount=empty, is_fraud=empty)
    # Relative zero sits one label window before the first hour, so H - window is never < 0.
    first = min(int(t.min()), int(label_t.min()))
    base = first // _HOUR * _HOUR - _LABEL_WINDOW
    end_abs = _end_seconds(end) if end is not None else int(t.max()) // _HOUR * _HOUR + _HOUR
    t_rel = t - base
    label_rel = label_t - base
    span = int(max(t_rel.max(), label_rel.max())) + _LABEL_WINDOW + 2 * _HOUR
    return _Events(
        base=base,
        span=span,
        end=end_abs - base,
        t=t_rel,
        label_t=label_rel,
        # Raw amounts in whatever currency they came in: no FX conversion, which is fine for
        # the synthetic set (its amounts share one nominal scale) but not for real traffic.
        amount=transactions[schema.AMOUNT].to_numpy(dtype=np.float64),
        is_fraud=transactions[schema.IS_FRAUD].to_numpy(dtype=np.int64),
    )


def _snapshots(entity: np.ndarray, times: list[np.ndarray], ev: _Events) -> _Snapshots:
    """Unique (entity, H) with H the hour boundary after each time; H beyond ``end`` dropped."""
    keys = np.concatenate([entity * ev.span + (t // _HOUR + 1) * _HOUR for t in times])
    # Sort and drop repeats by hand: np.unique's hash path is several times slower here.
    keys.sort()
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
    snap_entity, snap_t = np.divmod(keys, ev.span)
    keep = snap_t <= ev.end
    return _Snapshots(snap_entity[keep], snap_t[keep])


def _window_count(timeline: _Timeline, snaps: _Snapshots, width: int) -> np.ndarray:
    lo, hi = timeline.window(snaps, width)
    return (hi - lo).astype(np.int64)


def _window_sum(
    timeline: _Timeline, prefix: np.ndarray, snaps: _Snapshots, width: int
) -> np.ndarray:
    lo, hi = timeline.window(snaps, width)
    return prefix[hi] - prefix[lo]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` as float64, 0.0 where the denominator is 0."""
    out = np.zeros(len(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _distinct_count(
    entity: np.ndarray, value: np.ndarray, ev: _Events, snaps: _Snapshots, width: int
) -> np.ndarray:
    """Distinct ``value`` per snapshot among its entity's events in ``[H - width, H)``."""
    order = np.lexsort((ev.t, value, entity))
    e, v, t = entity[order], value[order], ev.t[order]
    same_as_next = np.zeros(len(e), dtype=bool)
    same_as_next[:-1] = (e[1:] == e[:-1]) & (v[1:] == v[:-1])
    next_t = np.full(len(e), ev.span, dtype=np.int64)
    next_t[:-1] = np.where(same_as_next[:-1], t[1:], ev.span)
    # An occurrence at t is its value's latest before H and inside the window iff
    # t < H <= min(next occurrence, t + width); count those intervals that contain H.
    stop = np.minimum(next_t, t + width)
    query = snaps.entity * ev.span + snaps.t
    starts = np.sort(e * ev.span + t)
    stops = np.sort(e * ev.span + stop)
    started = np.searchsorted(starts, query, side="left")
    stopped = np.searchsorted(stops, query, side="left")
    return (started - stopped).astype(np.int64)


def _label_features(
    entity: np.ndarray, ev: _Events, snaps: _Snapshots
) -> tuple[np.ndarray, np.ndarray]:
    """Matured chargeback count and fraud rate in ``[H - 30d, H)`` by ``label_available_at``."""
    labels = _Timeline(entity, ev.label_t, ev.span)
    matured = _window_count(labels, snaps, _LABEL_WINDOW)
    chargebacks = _window_sum(labels, labels.prefix(ev.is_fraud), snaps, _LABEL_WINDOW)
    return chargebacks.astype(np.int64), _ratio(chargebacks, matured)


def _frame(
    entity_name: str,
    uniques: np.ndarray,
    snaps: _Snapshots,
    ev: _Events,
    features: dict[str, np.ndarray],
) -> pd.DataFrame:
    names = schema.ENTITY_FEATURES[entity_name]
    if list(features) != names:
        raise AssertionError(f"{entity_name}: features {list(features)} != schema {names}")
    stamps = pd.to_datetime((snaps.t + ev.base) * _NS_PER_S, unit="ns", utc=True)
    columns: dict[str, object] = {
        schema.ENTITY_JOIN_KEYS[entity_name]: uniques[snaps.entity].astype(object),
        schema.EVENT_TIMESTAMP: stamps,
        schema.CREATED_TIMESTAMP: stamps.copy(),
    }
    for name in names:
        columns[name] = np.asarray(features[name]).astype(schema.feature_dtype(name))
    return pd.DataFrame(columns)


def _ip_features(
    ev: _Events, ip: np.ndarray, ip_keys: np.ndarray, card: np.ndarray
) -> pd.DataFrame:
    snaps = _snapshots(ip, [ev.t, ev.label_t], ev)
    events = _Timeline(ip, ev.t, ev.span)
    amount_sum = events.prefix(ev.amount)
    count_7d = _window_count(events, snaps, 7 * _DAY)
    chargebacks, fraud_rate = _label_features(ip, ev, snaps)
    features = {
        "ip_txn_count_1h": _window_count(events, snaps, _HOUR),
        "ip_txn_count_24h": _window_count(events, snaps, _DAY),
        "ip_txn_count_7d": count_7d,
        "ip_distinct_cards_24h": _distinct_count(ip, card, ev, snaps, _DAY),
        "ip_amount_mean_7d": _ratio(_window_sum(events, amount_sum, snaps, 7 * _DAY), count_7d),
        "ip_chargeback_count_30d": chargebacks,
        "ip_fraud_rate_30d": fraud_rate,
    }
    return _frame("ip", ip_keys, snaps, ev, features)


def _card_features(
    ev: _Events, card: np.ndarray, card_keys: np.ndarray, ip: np.ndarray, ip_country: np.ndarray
) -> pd.DataFrame:
    snaps = _snapshots(card, [ev.t], ev)
    events = _Timeline(card, ev.t, ev.span)
    lo, hi = events.window(snaps, 30 * _DAY)
    count_30d = hi - lo
    amount_sum = events.prefix(ev.amount)
    small = (ev.amount < schema.SMALL_AMOUNT_THRESHOLD).astype(np.int64)
    features = {
        "card_txn_count_1h": _window_count(events, snaps, _HOUR),
        "card_txn_count_24h": _window_count(events, snaps, _DAY),
        "card_txn_count_7d": _window_count(events, snaps, 7 * _DAY),
        "card_amount_mean_30d": _ratio(amount_sum[hi] - amount_sum[lo], count_30d),
        "card_amount_max_30d": events.range_max(ev.amount, lo, hi),
        "card_distinct_ips_24h": _distinct_count(card, ip, ev, snaps, _DAY),
        "card_distinct_countries_24h": _distinct_count(card, ip_country, ev, snaps, _DAY),
        "card_small_txn_count_24h": _window_sum(events, events.prefix(small), snaps, _DAY),
    }
    return _frame("card", card_keys, snaps, ev, features)


def _merchant_features(
    ev: _Events, merchant: np.ndarray, merchant_keys: np.ndarray
) -> pd.DataFrame:
    snaps = _snapshots(merchant, [ev.t, ev.label_t], ev)
    events = _Timeline(merchant, ev.t, ev.span)
    count_7d = _window_count(events, snaps, 7 * _DAY)
    amount_7d = _window_sum(events, events.prefix(ev.amount), snaps, 7 * _DAY)
    chargebacks, fraud_rate = _label_features(merchant, ev, snaps)
    features = {
        "merchant_txn_count_24h": _window_count(events, snaps, _DAY),
        "merchant_txn_count_7d": count_7d,
        "merchant_amount_mean_7d": _ratio(amount_7d, count_7d),
        "merchant_chargeback_count_30d": chargebacks,
        "merchant_fraud_rate_30d": fraud_rate,
    }
    return _frame("merchant", merchant_keys, snaps, ev, features)


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and the unique values they index."""
    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def aggregate(transactions: pd.DataFrame, end: datetime | None = None) -> dict[str, pd.DataFrame]:
    """Compute hourly feature snapshots per entity; returns frames keyed "ip", "card", "merchant".

    ``end`` (naive means UTC) drops snapshots later than it; by default it is the hour after the
    hour of the latest event. Columns are the join key, ``event_timestamp``,
    ``created_timestamp`` and ``schema.ENTITY_FEATURES[entity]`` (counts int64, others float64,
    no NaN). See the module docstring for the point-in-time semantics.
    """
    ev = _prepare(transactions, end)
    ip, ip_keys = _codes(transactions[schema.IP_ADDRESS])
    card, card_keys = _codes(transactions[schema.CARD_ID])
    merchant, merchant_keys = _codes(transactions[schema.MERCHANT_ID])
    ip_country, _ = _codes(transactions[schema.IP_COUNTRY])
    return {
        "ip": _ip_features(ev, ip, ip_keys, card),
        "card": _card_features(ev, card, card_keys, ip, ip_country),
        "merchant": _merchant_features(ev, merchant, merchant_keys),
    }
