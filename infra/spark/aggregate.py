"""Batch aggregation on Spark: the project's own aggregation, fanned out by entity.

    spark-submit --master 'local[*]' infra/spark/aggregate.py \\
        --transactions data/transactions.parquet --out-dir feature_repo/fraud/data

Every entity's features depend on that entity's transactions only (see the point-in-time rules
in ``feature_pipelines/fraud/aggregate.py``). So, per entity type, the transactions are split into
buckets by a hash of the join key, and each bucket goes through
``feature_pipelines.fraud.aggregate.aggregate`` in a grouped pandas UDF: the same code as
``python -m feature_pipelines aggregate``, hence the same rows, with the work spread over Spark's
executors (local threads here, a cluster's executors with ``--master k8s://...``).

Two ways out:

- default: each entity's table is collected and written as one parquet file named like the
  in-process pipeline's (``ip_features.parquet``, ...), which the repository's file sources and
  every Feast offline store read unchanged. Fits while one table fits the driver's memory.
- ``--partitioned``: Spark writes each table as a folder of parquet parts, in parallel, for a
  Spark offline store (Feast ``SparkSource``) once the tables outgrow one machine.

The ``end`` of the snapshots is fixed once for all buckets (by default the hour after the
latest event, as the in-process pipeline does), so no bucket decides it from its own data.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from feature_pipelines.fraud import schema
from feature_pipelines.fraud.aggregate import REQUIRED_COLUMNS, aggregate
from feature_pipelines.tables import write_feature_table

JOIN_KEYS = schema.ENTITY_JOIN_KEYS
TIMESTAMP_COLUMNS = (schema.EVENT_TIMESTAMP, schema.LABEL_AVAILABLE_AT)


def _utc(frame: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Arrow hands Spark timestamps to pandas without a zone; they are UTC (session zone)."""
    for column in columns:
        if column in frame.columns:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def spark_schema(sample: pd.DataFrame) -> T.StructType:
    """The Spark schema of an aggregate() table, from a table computed on a sample."""
    fields = []
    for name, dtype in sample.dtypes.items():
        if pd.api.types.is_datetime64_any_dtype(dtype):
            kind: T.DataType = T.TimestampType()
        elif pd.api.types.is_integer_dtype(dtype):
            kind = T.LongType()
        elif pd.api.types.is_float_dtype(dtype):
            kind = T.DoubleType()
        else:
            kind = T.StringType()
        fields.append(T.StructField(str(name), kind, nullable=False))
    return T.StructType(fields)


def default_end(transactions: DataFrame) -> datetime:
    """The hour after the hour of the latest event, like aggregate()'s own default."""
    latest = transactions.agg(F.max(schema.EVENT_TIMESTAMP)).first()[0]
    latest = latest.replace(tzinfo=UTC) if latest.tzinfo is None else latest.astimezone(UTC)
    return latest.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def entity_table(
    transactions: DataFrame, entity: str, end: datetime, buckets: int, sample: pd.DataFrame
) -> DataFrame:
    """One entity type's snapshot table, computed bucket by bucket with aggregate()."""
    key = JOIN_KEYS[entity]
    columns = list(sample.columns)

    def per_bucket(frame: pd.DataFrame) -> pd.DataFrame:
        frame = _utc(frame.drop(columns="_bucket"), TIMESTAMP_COLUMNS)
        table = aggregate(frame, end=end)[entity]
        return table[columns]

    bucketed = transactions.withColumn("_bucket", F.pmod(F.xxhash64(key), F.lit(buckets)))
    return bucketed.groupBy("_bucket").applyInPandas(per_bucket, schema=spark_schema(sample))


def main() -> None:
    """Parse arguments, aggregate every entity type, write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", required=True, help="parquet file or folder")
    parser.add_argument("--out-dir", required=True, help="folder for the feature tables")
    parser.add_argument("--end", default=None, help="ISO-8601 end of the snapshots (UTC)")
    parser.add_argument("--buckets", type=int, default=64, help="entity buckets per type")
    parser.add_argument("--partitioned", action="store_true", help="write parquet folders")
    args = parser.parse_args()

    spark = SparkSession.builder.appName("fraud-aggregate").getOrCreate()
    # Timestamps are instants; UTC in the session keeps the pandas side free of local time.
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    # Parquet timestamps as INT64 microseconds, as the pandas pipeline writes them and DuckDB
    # (the repository's offline store) reads them; Spark's default INT96 is a legacy form.
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    transactions = spark.read.parquet(args.transactions).select(*REQUIRED_COLUMNS)
    if args.end:
        end = datetime.fromisoformat(args.end)
        end = end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)
    else:
        end = default_end(transactions)
    # Column names and types of every table, from aggregate() itself on a few rows.
    head = _utc(transactions.limit(1000).toPandas(), TIMESTAMP_COLUMNS)
    samples = aggregate(head, end=end)
    out_dir = args.out_dir.rstrip("/")
    for entity in JOIN_KEYS:
        table = entity_table(transactions, entity, end, args.buckets, samples[entity])
        target = f"{out_dir}/{schema.TABLE_FILES[entity]}"
        if args.partitioned:
            table.write.mode("overwrite").parquet(target)
        else:
            frame = _utc(table.toPandas(), [schema.EVENT_TIMESTAMP, schema.CREATED_TIMESTAMP])
            frame = frame.sort_values([JOIN_KEYS[entity], schema.EVENT_TIMESTAMP], kind="stable")
            # Written beside, then renamed: materialization never reads half a file.
            partial = Path(f"{target}.partial")
            write_feature_table(frame.reset_index(drop=True), partial)
            os.replace(partial, target)
        print(f"wrote {target}")
    spark.stop()


if __name__ == "__main__":
    main()
