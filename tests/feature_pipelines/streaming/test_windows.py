"""Window maths: values against a brute-force count, and the point-in-time stamp of a row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_pipelines.fraud.windows import CATALOGUE
from feature_pipelines.streaming.replay import stream_tables
from feature_pipelines.streaming.windows import (
    MINUTE_US,
    SECOND_US,
    StreamKind,
    WindowCatalogue,
    WindowEvents,
    WindowFeature,
    feature_rows,
)


def brute_force(
    catalogue: WindowCatalogue, events: pd.DataFrame, kind: StreamKind, entity: str, asof: int
) -> dict[str, float]:
    """Every feature of ``kind`` for one entity over ``(asof - w, asof]``, one event at a time."""
    t_us = events["event_timestamp"].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    mine = (events[kind.join_key] == entity).to_numpy()
    out: dict[str, float] = {}
    for feature in kind.features:
        inside = mine & (t_us > asof - feature.window_us) & (t_us <= asof)
        units = catalogue.to_units(events.loc[inside, catalogue.value_field].to_numpy())
        if feature.aggregate == "count":
            out[feature.name] = int(inside.sum())
        elif feature.aggregate == "sum":
            out[feature.name] = units.sum() / catalogue.value_scale
        elif feature.aggregate == "count_below":
            below = catalogue.to_units(feature.below)
            out[feature.name] = int((units < below).sum())
        else:
            out[feature.name] = events.loc[inside, kind.counterpart].nunique()
    return out


def test_windows_match_a_brute_force_count(history: pd.DataFrame) -> None:
    tables = stream_tables(CATALOGUE, history)
    for table, kind in CATALOGUE.tables.items():
        rows = tables[table]
        for entity in history[kind.join_key].value_counts().index[:4]:
            for _, row in rows[rows[kind.join_key] == entity].iterrows():
                asof = pd.Timestamp(row["event_timestamp"]).value // 1000 - 1
                expected = brute_force(CATALOGUE, history, kind, entity, asof)
                for name, value in expected.items():
                    assert row[name] == value, (entity, name)


def test_row_counts_its_event_and_is_stamped_one_microsecond_later(history) -> None:
    rows = stream_tables(CATALOGUE, history)["card_stream"]
    card = rows[rows["card_id"] == "card_burst_a"].reset_index(drop=True)
    first = history[history["card_id"] == "card_burst_a"]["event_timestamp"].min()
    assert card.loc[0, "event_timestamp"] == first + pd.Timedelta(microseconds=1)
    assert card.loc[0, "card_rt_txn_count_5m"] == 1  # the event itself
    assert card["card_rt_txn_count_1h"].tolist() == list(range(1, 31))
    # Twelve events at one instant: one row, counting all of them.
    tied = rows[rows["card_id"] == "card_burst_b"]
    assert len(tied) == 1 and tied["card_rt_txn_count_5m"].item() == 12
    instant = history[history["card_id"] == "card_burst_b"]["event_timestamp"].iloc[0]
    assert tied["event_timestamp"].item() == instant + pd.Timedelta(microseconds=12)


# A catalogue of another domain: the window code names no fraud concept.
SENSORS = WindowCatalogue(
    kinds=(
        StreamKind(
            name="meter",
            join_key="meter_id",
            counterpart="site_id",
            view="meter_stream_features",
            push_source="meter_stream_push",
            table_file="meter_stream_features.parquet",
            features=(
                WindowFeature("meter_readings_1m", "count", MINUTE_US),
                WindowFeature("meter_kwh_1m", "sum", MINUTE_US),
                WindowFeature("meter_low_readings_1m", "count_below", MINUTE_US, below=0.25),
                WindowFeature("meter_sites_30s", "distinct", 30 * SECOND_US),
            ),
        ),
    ),
    id_field="reading_id",
    value_field="kwh",
    value_scale=1000,
)


def test_another_domains_catalogue_gets_the_same_semantics() -> None:
    rng = np.random.default_rng(5)
    n = 400
    start = pd.Timestamp("2026-01-01", tz="UTC")
    readings = pd.DataFrame(
        {
            "reading_id": [f"r{i}" for i in range(n)],
            "event_timestamp": start + pd.to_timedelta(np.sort(rng.integers(0, 600, n)), "s"),
            "kwh": rng.integers(0, 1000, n) / 1000,
            "meter_id": rng.choice(["m1", "m2", "m3"], n),
            "site_id": rng.choice(["s1", "s2", "s3", "s4"], n),
        }
    )
    rows = stream_tables(SENSORS, readings)["meter_stream"]
    kind = SENSORS.kind("meter")
    assert list(rows.columns) == [
        "meter_id",
        "event_timestamp",
        "created_timestamp",
        *kind.feature_names,
    ]
    t_us = readings["event_timestamp"].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    for _, row in rows.iterrows():
        stamp = pd.Timestamp(row["event_timestamp"]).value // 1000
        # Readings fall on whole seconds; the row of those at t is stamped t + (how many) µs.
        t = stamp // SECOND_US * SECOND_US
        tied = int(((readings["meter_id"] == row["meter_id"]).to_numpy() & (t_us == t)).sum())
        assert stamp - t == tied
        expected = brute_force(SENSORS, readings, kind, row["meter_id"], t)
        for name, value in expected.items():
            assert row[name] == value, (row["meter_id"], name)


def test_a_declaration_error_is_refused() -> None:
    with pytest.raises(ValueError, match="count_below"):
        WindowFeature("x", "count", MINUTE_US, below=1.0)
    with pytest.raises(ValueError, match="positive"):
        WindowFeature("x", "count", 0)
    twice = StreamKind("k", "k_id", "c_id", "v", "p", "t.parquet", (SENSORS.kinds[0].features))
    with pytest.raises(ValueError, match="declared twice"):
        WindowCatalogue(kinds=(twice, SENSORS.kinds[0]), id_field="id", value_field="v")


def test_rows_of_no_events_have_the_declared_columns() -> None:
    kind = SENSORS.kind("meter")
    empty = np.zeros(0, dtype=np.int64)
    rows = feature_rows(
        SENSORS,
        kind,
        np.zeros(0, dtype=object),
        WindowEvents(empty, empty, empty, empty),
        empty,
        empty,
    )
    assert rows.empty
    assert list(rows.columns)[3:] == kind.feature_names
