"""The prediction-log format: its schema per domain, day partitions, and a lossless round trip.

The service's writer (queue, journal, sampling) is tested in
``tests/scoring_service/monitoring/test_prediction_log.py``; here is the format both it and the
monitor use, with its pseudonyms, private files and retention.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from feature_repo import prediction_log as log

KEYS = ["card_id", "ip_address"]
LATE = datetime(2024, 3, 10, 23, 59, 59, 999_999, tzinfo=UTC)
MIDNIGHT = datetime(2024, 3, 11, tzinfo=UTC)


def test_schema_puts_the_domains_keys_between_the_fixed_columns() -> None:
    schema = log.schema(KEYS)
    assert schema.names == [
        "request_id",
        "business_id",
        "ts",
        "domain",
        "deployment",
        "variant",
        "model_version",
        "card_id",
        "ip_address",
        "features",
        "feature_names",
        "statuses",
        "age_seconds",
        "score",
        "label",
        "reasons",
        "latency_ms",
    ]
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert schema.field("features").type == pa.list_(pa.float32())
    assert schema.field("statuses").type == pa.map_(pa.string(), pa.string())
    assert schema.field("age_seconds").type == pa.map_(pa.string(), pa.float64())
    for name in KEYS:
        assert schema.field(name).type == pa.string() and schema.field(name).nullable
    required = [f.name for f in schema if not f.nullable]
    assert required == [
        "request_id",
        "ts",
        "domain",
        "deployment",
        "variant",
        "model_version",
        "label",
    ]
    assert set(schema.names) - set(KEYS) == log.FIXED_COLUMNS


def test_a_domain_without_entities_has_the_fixed_columns_only() -> None:
    assert set(log.schema([]).names) == log.FIXED_COLUMNS
    assert log.join_key_columns(log.schema([])) == []


@pytest.mark.parametrize("key", ["score", "ts", "label"])
def test_a_join_key_named_like_a_fixed_column_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match=rf"join keys \['{key}'\] clash with prediction-log"):
        log.schema(["card_id", key])


def test_join_key_columns_are_the_others_in_order_without_the_partition() -> None:
    schema = log.schema(["merchant_id", "card_id"]).append(pa.field(log.DATE, pa.string()))
    assert log.join_key_columns(schema) == ["merchant_id", "card_id"]


@pytest.mark.parametrize(
    ("ts", "day"),
    [
        (LATE, "2024-03-10"),
        (MIDNIGHT, "2024-03-11"),
        (datetime(2024, 3, 10, 23, 30), "2024-03-10"),  # naive is UTC
        (datetime(2024, 3, 11, 1, 30, tzinfo=timezone(timedelta(hours=2))), "2024-03-10"),
        (datetime(2024, 3, 10, 20, 0, tzinfo=timezone(timedelta(hours=-5))), "2024-03-11"),
    ],
)
def test_the_partition_is_the_utc_day(ts: datetime, day: str) -> None:
    assert log.day_of(ts) == day


def row(i: int, ts: datetime, **change: object) -> dict[str, object]:
    return {
        "request_id": f"req-{i}",
        "business_id": f"tx-{i}",
        "ts": ts,
        "domain": "fraud",
        "deployment": "prod",
        "variant": "champion",
        "model_version": "fraud_model/v3",
        "card_id": f"card_{i}",
        "ip_address": None,
        "features": [1.5, math.nan],
        "feature_names": ["amount", "card_txn_count_24h"],
        "statuses": [("card_id", "present"), ("ip_address", "not_requested")],
        "age_seconds": [("card_id", 12.25), ("ip_address", None)],
        "score": 0.125,
        "label": "not_fraud",
        "reasons": [],
        "latency_ms": 3.5,
        **change,
    }


def table(*rows: dict[str, object]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=log.schema(KEYS))


def test_rows_go_to_their_days_and_come_back_unchanged(tmp_path: Path) -> None:
    written = table(
        row(1, LATE),
        row(2, MIDNIGHT, score=None, label="uncertain", reasons=["unknown_card_id"]),
        row(3, LATE - timedelta(hours=1), ip_address="203.0.113.7"),
    )
    paths = log.write(tmp_path, written, "part-0")
    assert paths == [
        tmp_path / "date=2024-03-10" / "part-0.parquet",
        tmp_path / "date=2024-03-11" / "part-0.parquet",
    ]
    assert pq.read_table(paths[0]).num_rows == 2
    # No staging file is left behind.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["part-0.parquet"] * 2

    back = log.read(tmp_path)
    assert back.schema.names == [*log.schema(KEYS).names, log.DATE]
    back = back.sort_by("request_id")
    assert back.column(log.DATE).to_pylist() == ["2024-03-10", "2024-03-11", "2024-03-10"]
    rows = back.drop_columns([log.DATE]).to_pylist()
    expected = written.sort_by("request_id").to_pylist()
    for got, want in zip(rows, expected, strict=True):
        assert math.isnan(got["features"][1]) and math.isnan(want["features"][1])
        got["features"][1] = want["features"][1] = None
        assert got == want
    assert rows[0]["ts"] == LATE  # microseconds kept
    assert rows[1]["score"] is None and rows[1]["reasons"] == ["unknown_card_id"]
    assert rows[2]["ip_address"] == "203.0.113.7"


def test_reads_select_columns_and_push_filters_down(tmp_path: Path) -> None:
    log.write(tmp_path, table(row(1, LATE), row(2, MIDNIGHT), row(3, MIDNIGHT)), "a")
    log.write(tmp_path, table(row(4, MIDNIGHT)), "b")
    found = log.read(
        tmp_path,
        columns=[log.BUSINESS_ID, log.SCORE],
        where=(pc.field(log.DATE) == "2024-03-11") & (pc.field(log.BUSINESS_ID) != "tx-3"),
    )
    assert found.column_names == [log.BUSINESS_ID, log.SCORE]
    assert sorted(found.column(log.BUSINESS_ID).to_pylist()) == ["tx-2", "tx-4"]


def test_a_rewrite_replaces_its_file_and_half_written_files_are_skipped(tmp_path: Path) -> None:
    log.write(tmp_path, table(row(1, LATE), row(2, LATE)), "part-0")
    log.write(tmp_path, table(row(3, LATE)), "part-0")
    folder = tmp_path / "date=2024-03-10"
    (folder / ".part-1.parquet.tmp").write_bytes(b"PAR1 half a file")
    (tmp_path / "_journal").mkdir()
    (tmp_path / "_journal" / "open.parquet").write_bytes(b"not parquet")
    assert log.read(tmp_path).column(log.REQUEST_ID).to_pylist() == ["req-3"]


def test_pseudonyms_are_keyed_stable_and_irreversible_without_the_key(tmp_path: Path) -> None:
    key = log.pseudonym_key(tmp_path / "log")
    assert log.pseudonym_key(tmp_path / "log") == key  # kept, not made again
    assert len(key) == 32
    assert (tmp_path / "log" / log.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "log").stat().st_mode & 0o777 == 0o700
    one = log.pseudonym_key(tmp_path / "other")
    assert one != key
    assert log.pseudonymize("card_0000001", key) == log.pseudonymize("card_0000001", key)
    assert log.pseudonymize("card_0000001", key) != log.pseudonymize("card_0000001", one)
    assert log.pseudonymize("card_0000001", key) != log.pseudonymize("card_0000002", key)


def test_expired_partitions_are_whole_days_past_the_retention(tmp_path: Path) -> None:
    for day in ("2026-10-31", "2026-11-01", "2026-11-02", "2026-11-30"):
        (tmp_path / f"date={day}").mkdir()
    (tmp_path / "_journal").mkdir()
    now = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    expired = log.expired_partitions(tmp_path, 30, now)
    assert [p.name for p in expired] == ["date=2026-10-31"]
    assert log.expired_partitions(tmp_path / "none", 30, now) == []
