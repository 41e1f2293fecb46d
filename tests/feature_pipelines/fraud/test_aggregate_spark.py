"""The Spark engine's feature tables (``aggregate_spark``) equal the pandas engine's.

On the same 100k generated transactions: same keys and timestamps, counts exact, means, maxima
and rates within 1e-9; plus hand-made edge cases (hour boundaries, label maturity, ``end``) and
the input checks both engines share.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from feature_pipelines.fraud import schema
from feature_pipelines.fraud.aggregate import aggregate
from feature_pipelines.fraud.aggregate_spark import aggregate_spark, write_feature_tables_spark
from tests.feature_pipelines.spark_helpers import SPARK_MARKS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = SPARK_MARKS

TOLERANCE = 1e-9


def sorted_table(frame: pd.DataFrame, entity: str) -> pd.DataFrame:
    key = schema.ENTITY_JOIN_KEYS[entity]
    return frame.sort_values([key, schema.EVENT_TIMESTAMP], kind="stable").reset_index(drop=True)


def assert_tables_equal(expected: pd.DataFrame, actual: pd.DataFrame, entity: str) -> None:
    """Same columns and dtypes, same (key, time) rows; counts exact, the rest within 1e-9."""
    assert list(actual.columns) == list(expected.columns), entity
    assert dict(actual.dtypes) == dict(expected.dtypes), entity
    assert len(actual) == len(expected), entity
    expected, actual = sorted_table(expected, entity), sorted_table(actual, entity)
    identity = [
        schema.ENTITY_JOIN_KEYS[entity],
        schema.EVENT_TIMESTAMP,
        schema.CREATED_TIMESTAMP,
    ]
    pd.testing.assert_frame_equal(actual[identity], expected[identity])
    for name in schema.ENTITY_FEATURES[entity]:
        want, got = expected[name].to_numpy(), actual[name].to_numpy()
        assert not np.isnan(got.astype(np.float64)).any(), name
        if schema.feature_dtype(name) == "int64":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE, err_msg=name)


def spark_tables(frames: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Spark frames as pandas, timestamps as the pandas engine types them (ns, UTC)."""
    out = {}
    for entity, frame in frames.items():
        table = frame.toPandas()
        for column in (schema.EVENT_TIMESTAMP, schema.CREATED_TIMESTAMP):
            table[column] = pd.to_datetime(table[column], utc=True).astype("datetime64[ns, UTC]")
        out[entity] = table
    return out


def test_spark_tables_equal_pandas_tables_on_100k(engine_tables: dict[str, Path]) -> None:
    for entity, file_name in schema.TABLE_FILES.items():
        expected = pd.read_parquet(engine_tables["pandas"] / file_name)
        actual = pd.read_parquet(engine_tables["spark"] / file_name)
        assert len(expected) > 50_000 if entity == "ip" else len(expected) > 10_000
        assert_tables_equal(expected, actual, entity)


def test_spark_end_drops_later_snapshots_like_pandas(
    spark: SparkSession, transactions_100k: Path
) -> None:
    """An ``end`` inside the data, not on an hour boundary: the same snapshots survive."""
    frame = pd.read_parquet(transactions_100k).head(10_000)
    end = frame[schema.EVENT_TIMESTAMP].iloc[7_500].to_pydatetime() + timedelta(minutes=7)
    expected = aggregate(frame, end=end)
    actual = spark_tables(aggregate_spark(spark.createDataFrame(frame), end=end))
    for entity in schema.ENTITY_JOIN_KEYS:
        assert actual[entity][schema.EVENT_TIMESTAMP].max() <= end
        assert_tables_equal(expected[entity], actual[entity], entity)


H = pd.Timestamp("2024-03-10 12:00", tz="UTC")
HOUR = pd.Timedelta(hours=1)
DAY = pd.Timedelta(days=1)
SECOND = pd.Timedelta(seconds=1)


def edge_cases() -> pd.DataFrame:
    """Events on and next to hour boundaries and window edges, labels maturing late and early."""
    defaults: dict[str, Any] = {
        schema.AMOUNT: 10.0,
        schema.IP_ADDRESS: "198.51.100.1",
        schema.CARD_ID: "card_a",
        schema.MERCHANT_ID: "m_a",
        schema.IP_COUNTRY: "US",
        schema.IS_FRAUD: 0,
    }
    rows: list[dict[str, Any]] = [
        {schema.EVENT_TIMESTAMP: H},  # exactly on a boundary: in the next snapshot only
        {schema.EVENT_TIMESTAMP: H - SECOND, schema.AMOUNT: 3.0},  # small, just before
        {schema.EVENT_TIMESTAMP: H - DAY, schema.CARD_ID: "card_b"},  # on the 24h edge
        {schema.EVENT_TIMESTAMP: H - DAY + SECOND, schema.IP_COUNTRY: "DE"},
        {schema.EVENT_TIMESTAMP: H - 7 * DAY, schema.AMOUNT: 999.5},  # on the 7d edge
        {schema.EVENT_TIMESTAMP: H - 30 * DAY + SECOND, schema.AMOUNT: 1234.25},
        # Fraud whose label matures 40 days later: counted only from then on, and only for 30d.
        {
            schema.EVENT_TIMESTAMP: H - 2 * HOUR,
            schema.IS_FRAUD: 1,
            schema.LABEL_AVAILABLE_AT: H + 40 * DAY + 30 * SECOND,
        },
        # A label maturing at exactly a boundary (in the next snapshot), for another ip.
        {
            schema.EVENT_TIMESTAMP: H - 3 * DAY,
            schema.IP_ADDRESS: "203.0.113.9",
            schema.MERCHANT_ID: "m_b",
            schema.IS_FRAUD: 1,
            schema.LABEL_AVAILABLE_AT: H + 2 * HOUR,
        },
        {schema.EVENT_TIMESTAMP: H + 90 * SECOND, schema.CARD_ID: "card_b"},
    ]
    records = []
    for row in rows:
        record = {**defaults, **row}
        record.setdefault(schema.LABEL_AVAILABLE_AT, record[schema.EVENT_TIMESTAMP] + 5 * DAY)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    frame[schema.IS_FRAUD] = frame[schema.IS_FRAUD].astype("int8")
    return frame


@pytest.mark.parametrize("end", [None, datetime(2024, 3, 11, 0, 30)], ids=["default", "naive"])
def test_spark_edge_cases_equal_pandas(spark: SparkSession, end: datetime | None) -> None:
    frame = edge_cases()
    expected = aggregate(frame, end=end)
    actual = spark_tables(aggregate_spark(spark.createDataFrame(frame), end=end))
    for entity in schema.ENTITY_JOIN_KEYS:
        assert len(expected[entity]) > 0
        assert_tables_equal(expected[entity], actual[entity], entity)


def test_spark_empty_input_gives_empty_tables(spark: SparkSession) -> None:
    frame = edge_cases().head(0)
    tables = spark_tables(aggregate_spark(spark.createDataFrame(frame, schema=_schema(spark))))
    for entity, table in tables.items():
        key = schema.ENTITY_JOIN_KEYS[entity]
        expected = [key, schema.EVENT_TIMESTAMP, schema.CREATED_TIMESTAMP]
        assert list(table.columns) == expected + schema.ENTITY_FEATURES[entity]
        assert table.empty


def _schema(spark: SparkSession):  # type: ignore[no-untyped-def]
    """The input schema, for a frame without rows to infer it from."""
    return spark.createDataFrame(edge_cases()).schema


def test_spark_refuses_what_pandas_refuses(spark: SparkSession) -> None:
    frame = edge_cases()
    with pytest.raises(ValueError, match=r"lack columns.*amount"):
        aggregate_spark(spark.createDataFrame(frame.drop(columns=[schema.AMOUNT])))
    frame[schema.CARD_ID] = frame[schema.CARD_ID].astype(object)
    frame.loc[2, schema.CARD_ID] = None
    with pytest.raises(ValueError, match=r"nulls in.*card_id"):
        aggregate_spark(spark.createDataFrame(frame))


def test_spark_floors_hours_before_1970_like_pandas(spark: SparkSession) -> None:
    """Hour indexes of times before the epoch are floored, not truncated towards zero."""
    frame = edge_cases()
    shift = pd.Timestamp("1969-12-31 12:00", tz="UTC") - H
    for column in (schema.EVENT_TIMESTAMP, schema.LABEL_AVAILABLE_AT):
        frame[column] = frame[column] + shift
    expected = aggregate(frame)
    actual = spark_tables(aggregate_spark(spark.createDataFrame(frame)))
    for entity in schema.ENTITY_JOIN_KEYS:
        assert expected[entity][schema.EVENT_TIMESTAMP].min() < pd.Timestamp(0, tz="UTC")
        assert_tables_equal(expected[entity], actual[entity], entity)


def test_spark_writes_one_sorted_file_per_table_replacing_the_last(
    spark: SparkSession, tmp_path: Path
) -> None:
    frame = spark.createDataFrame(edge_cases())
    write_feature_tables_spark(aggregate_spark(frame), tmp_path)
    end = datetime(2024, 3, 10, 12, 0)
    write_feature_tables_spark(aggregate_spark(frame, end=end), tmp_path)
    # Only the three files: each scratch folder is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schema.TABLE_FILES.values())
    expected = aggregate(edge_cases(), end=end)
    for entity, file_name in schema.TABLE_FILES.items():
        written = pd.read_parquet(tmp_path / file_name)
        key = schema.ENTITY_JOIN_KEYS[entity]
        assert written[schema.EVENT_TIMESTAMP].max() == pd.Timestamp(end, tz="UTC")
        pd.testing.assert_frame_equal(
            written[[key, schema.EVENT_TIMESTAMP]],
            written[[key, schema.EVENT_TIMESTAMP]].sort_values([key, schema.EVENT_TIMESTAMP]),
        )
        assert len(written) == len(expected[entity])
