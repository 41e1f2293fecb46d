"""Batch features per entity on Spark: the hourly snapshots of the pandas engine, at scale.

Same definitions and semantics as the pandas engine (``aggregate``'s module docstring): a
snapshot of an entity at hour boundary ``H`` for every hour ``[H - 1h, H)`` with one of its
transactions (and, for ip and merchant, one of its labels maturing); each snapshot aggregates
transactions with ``event_timestamp`` in ``[H - window, H)`` and labels with
``label_available_at`` in ``[H - 30d, H)``; snapshots later than ``end`` are dropped.

How: every window ends at an hour boundary and spans whole hours, so an event at time ``t``
falls in the window ``[H - w, H)`` exactly when its hour ``floor(t / 1h)`` lies in
``[H/1h - w/1h, H/1h - 1]``. Each entity type is therefore reduced to one row per
(entity, hour) holding that hour's event and label totals and a snapshot flag; the features of
a snapshot are window functions over the entity's preceding hours, ordered by the hour index:
sums as differences of running totals, maxima and distinct sets over ``rangeBetween(-w, -1)``
(see ``_Windows``). One shuffle for the hourly rows, one for the windows; no per-event join, so
the work grows with the number of active (entity, hour) pairs, not with events times windows.

Why one module of this length: it mirrors the pandas engine view by view (the engine-equality test
compares them), which is easiest to review when each view's Spark plan sits in one place.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from feature_pipelines.fraud import schema
from feature_pipelines.fraud.aggregate import REQUIRED_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

_HOUR_US = 3_600_000_000
_HOUR_S = 3_600
# Window widths in hours.
_1H, _24H, _7D, _30D = 1, 24, 7 * 24, 30 * 24

# Columns of the hourly rows.
_HOUR = "hour"
_SNAPSHOT = "is_snapshot"
_N = "n"
_AMOUNT_SUM = "amount_sum"
_AMOUNT_MAX = "amount_max"
_SMALL_N = "small_n"
_MATURED_N = "matured_n"
_FRAUD_N = "fraud_n"


def _hour_index(column: str) -> Column:
    """Whole hours since the epoch, floored (also before 1970)."""
    from pyspark.sql import functions as F

    micros = f"unix_micros(`{column}`)"
    # Integral division of an exact multiple: no floating point on the way.
    return F.expr(f"({micros} - pmod({micros}, {_HOUR_US})) div {_HOUR_US}")


def _scan(transactions: DataFrame) -> int | None:
    """The pandas engine's input checks (columns present, no nulls) and the hour of the latest
    event (None without events), in one pass over the input."""
    from pyspark.sql import functions as F

    missing = [c for c in REQUIRED_COLUMNS if c not in transactions.columns]
    if missing:
        raise ValueError(f"transactions lack columns: {missing}")
    row = transactions.select(
        *[F.sum(F.col(c).isNull().cast("long")).alias(c) for c in REQUIRED_COLUMNS],
        F.max(_hour_index(schema.EVENT_TIMESTAMP)).alias(_HOUR),
    ).first()
    if row is None:
        return None
    nulls = [c for c in REQUIRED_COLUMNS if (row[c] or 0) > 0]
    if nulls:
        raise ValueError(f"transactions have nulls in: {nulls}")
    return None if row[_HOUR] is None else int(row[_HOUR])


def _end_hour(latest_hour: int, end: datetime | None) -> int:
    """Last hour index whose boundary is a kept snapshot."""
    if end is None:
        # Default end: the hour after the hour of the latest event.
        return latest_hour + 1
    stamp = end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)
    seconds = (stamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)
    return seconds // _HOUR_S  # H <= end, H a whole hour


def _events(transactions: DataFrame) -> DataFrame:
    """One row per transaction: entity keys, hour of the event and of its label, values."""
    from pyspark.sql import functions as F

    return transactions.select(
        F.col(schema.IP_ADDRESS).cast("string").alias(schema.IP_ADDRESS),
        F.col(schema.CARD_ID).cast("string").alias(schema.CARD_ID),
        F.col(schema.MERCHANT_ID).cast("string").alias(schema.MERCHANT_ID),
        F.col(schema.IP_COUNTRY).cast("string").alias(schema.IP_COUNTRY),
        _hour_index(schema.EVENT_TIMESTAMP).alias(_HOUR),
        _hour_index(schema.LABEL_AVAILABLE_AT).alias("label_hour"),
        # Raw amounts, no FX conversion: as in the pandas engine.
        F.col(schema.AMOUNT).cast("double").alias(schema.AMOUNT),
        F.col(schema.IS_FRAUD).cast("long").alias(schema.IS_FRAUD),
    )


def _hourly(
    events: DataFrame,
    key: str,
    end_hour: int,
    with_labels: bool,
    distinct: list[str],
    amount_max: bool = False,
    small: bool = False,
) -> DataFrame:
    """One row per (entity, hour) up to ``end_hour``: that hour's totals and a snapshot flag.

    Rows come from the events in the hour, from the labels maturing in it, and from the
    snapshot markers at the hour after each event (and label). Hours after ``end_hour`` can
    neither be snapshots nor fall inside the window of one, so they are dropped here.
    """
    from pyspark.sql import functions as F

    zero, one, null = F.lit(0).cast("long"), F.lit(1).cast("long"), F.lit(None)
    value_columns = [*distinct]

    def rows(hour: Column, kind: str) -> DataFrame:
        is_event = kind == "event"
        is_label = kind == "label"
        return events.select(
            F.col(key),
            hour.alias(_HOUR),
            (one if kind == "snapshot" else zero).alias(_SNAPSHOT),
            (one if is_event else zero).alias(_N),
            (F.col(schema.AMOUNT) if is_event else null.cast("double")).alias(_AMOUNT_SUM),
            (
                (F.col(schema.AMOUNT) < F.lit(schema.SMALL_AMOUNT_THRESHOLD)).cast("long")
                if is_event
                else zero
            ).alias(_SMALL_N),
            (one if is_label else zero).alias(_MATURED_N),
            (F.col(schema.IS_FRAUD) if is_label else zero).alias(_FRAUD_N),
            *[(F.col(c) if is_event else null.cast("string")).alias(c) for c in value_columns],
        )

    parts = [rows(F.col(_HOUR), "event"), rows(F.col(_HOUR) + 1, "snapshot")]
    if with_labels:
        parts += [rows(F.col("label_hour"), "label"), rows(F.col("label_hour") + 1, "snapshot")]
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    aggregates = [
        F.max(_SNAPSHOT).alias(_SNAPSHOT),
        F.sum(_N).alias(_N),
        # 0.0, not null, in hours without events: running totals carry through them.
        F.coalesce(F.sum(_AMOUNT_SUM), F.lit(0.0)).alias(_AMOUNT_SUM),
    ]
    if amount_max:
        # Event rows carry their raw amount in the sum column; its maximum is the hour's.
        aggregates.append(F.max(_AMOUNT_SUM).alias(_AMOUNT_MAX))
    if small:
        aggregates.append(F.sum(_SMALL_N).alias(_SMALL_N))
    if with_labels:
        aggregates += [F.sum(_MATURED_N).alias(_MATURED_N), F.sum(_FRAUD_N).alias(_FRAUD_N)]
    # collect_set skips nulls: the distinct values seen in this hour.
    aggregates += [F.collect_set(c).alias(c) for c in value_columns]
    return union.where(F.col(_HOUR) <= F.lit(end_hour)).groupBy(key, _HOUR).agg(*aggregates)


class _Windows:
    """Windows over the preceding hours of one entity: ``[H - w, H)`` for ``w`` hours.

    Sums come from running totals: the total over ``[H - w, H)`` is the running total at the
    entity's last hour before ``H`` minus the one at its last hour before ``H - w``. Both are
    frames from the partition's start (``rangeBetween(unboundedPreceding, -k)``), which Spark
    extends row by row, so the cost does not grow with the window's length; a bounded range
    frame would re-aggregate all of its rows for every row (Spark has no inverse aggregates).
    Maxima and distinct sets, which cannot be subtracted, use the bounded frame: they are only
    taken over card windows, short runs of a card's active hours.
    """

    def __init__(self, hourly: DataFrame, key: str, summed: list[str]) -> None:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        self._base = Window.partitionBy(key).orderBy(_HOUR)
        running = self._base.rowsBetween(Window.unboundedPreceding, Window.currentRow)
        # One row per (entity, hour), so the running total at a row is the total up to its hour.
        self.frame = hourly.select(
            "*", *[F.sum(c).over(running).alias(self._running(c)) for c in summed]
        )

    @staticmethod
    def _running(column: str) -> str:
        return f"{column}_running"

    def _before(self, column: str, hours: int) -> Column:
        """Running total of ``column`` at the entity's last hour at or before ``H - hours``."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        frame = self._base.rangeBetween(Window.unboundedPreceding, -hours)
        return F.coalesce(F.last(self._running(column)).over(frame), F.lit(0))

    def over(self, hours: int):  # type: ignore[no-untyped-def]
        return self._base.rangeBetween(-hours, -1)

    def total(self, column: str, hours: int) -> Column:
        """Sum of an hourly column over the window; 0 for an empty window."""
        return self._before(column, 1) - self._before(column, hours + 1)

    def count(self, hours: int) -> Column:
        """Transactions in the window."""
        return self.total(_N, hours)

    def maximum(self, column: str, hours: int) -> Column:
        """Maximum of an hourly column over the window; 0.0 for an empty window."""
        from pyspark.sql import functions as F

        return F.coalesce(F.max(column).over(self.over(hours)), F.lit(0.0))

    def distinct(self, column: str, hours: int) -> Column:
        """Distinct values over the window: the union of the hourly sets."""
        from pyspark.sql import functions as F

        return F.size(F.array_distinct(F.flatten(F.collect_list(column).over(self.over(hours)))))


def _ratio(numerator: Column, denominator: Column) -> Column:
    """``numerator / denominator`` as a double, 0.0 where the denominator is 0."""
    from pyspark.sql import functions as F

    return F.when(denominator > 0, numerator.cast("double") / denominator.cast("double")).otherwise(
        F.lit(0.0)
    )


def _label_features(w: _Windows, prefix: str) -> dict[str, Column]:
    """Matured chargebacks and fraud rate in ``[H - 30d, H)`` by ``label_available_at``."""
    chargebacks = w.total(_FRAUD_N, _30D)
    return {
        f"{prefix}_chargeback_count_30d": chargebacks,
        f"{prefix}_fraud_rate_30d": _ratio(chargebacks, w.total(_MATURED_N, _30D)),
    }


def _snapshots(entity: str, w: _Windows, features: dict[str, Column]) -> DataFrame:
    """Snapshot rows with the join key, timestamps and features in schema order and types."""
    from pyspark.sql import functions as F

    names = schema.ENTITY_FEATURES[entity]
    if list(features) != names:
        raise AssertionError(f"{entity}: features {list(features)} != schema {names}")
    key = schema.ENTITY_JOIN_KEYS[entity]
    spark_types = {"int64": "long", "float64": "double"}
    with_features = w.frame.select(
        F.col(key),
        F.col(_HOUR),
        F.col(_SNAPSHOT),
        *[
            column.cast(spark_types[schema.feature_dtype(name)]).alias(name)
            for name, column in features.items()
        ],
    )
    stamp = F.timestamp_seconds(F.col(_HOUR) * F.lit(_HOUR_S))
    return with_features.where(F.col(_SNAPSHOT) == 1).select(
        F.col(key),
        stamp.alias(schema.EVENT_TIMESTAMP),
        stamp.alias(schema.CREATED_TIMESTAMP),
        *names,
    )


def _ip_features(events: DataFrame, end_hour: int) -> DataFrame:
    key = schema.IP_JOIN_KEY
    hourly = _hourly(events, key, end_hour, with_labels=True, distinct=[schema.CARD_ID])
    w = _Windows(hourly, key, summed=[_N, _AMOUNT_SUM, _MATURED_N, _FRAUD_N])
    count_7d = w.count(_7D)
    features = {
        "ip_txn_count_1h": w.count(_1H),
        "ip_txn_count_24h": w.count(_24H),
        "ip_txn_count_7d": count_7d,
        "ip_distinct_cards_24h": w.distinct(schema.CARD_ID, _24H),
        "ip_amount_mean_7d": _ratio(w.total(_AMOUNT_SUM, _7D), count_7d),
        **_label_features(w, "ip"),
    }
    return _snapshots("ip", w, features)


def _card_features(events: DataFrame, end_hour: int) -> DataFrame:
    key = schema.CARD_JOIN_KEY
    hourly = _hourly(
        events,
        key,
        end_hour,
        with_labels=False,
        distinct=[schema.IP_ADDRESS, schema.IP_COUNTRY],
        amount_max=True,
        small=True,
    )
    w = _Windows(hourly, key, summed=[_N, _AMOUNT_SUM, _SMALL_N])
    features = {
        "card_txn_count_1h": w.count(_1H),
        "card_txn_count_24h": w.count(_24H),
        "card_txn_count_7d": w.count(_7D),
        "card_amount_mean_30d": _ratio(w.total(_AMOUNT_SUM, _30D), w.count(_30D)),
        "card_amount_max_30d": w.maximum(_AMOUNT_MAX, _30D),
        "card_distinct_ips_24h": w.distinct(schema.IP_ADDRESS, _24H),
        "card_distinct_countries_24h": w.distinct(schema.IP_COUNTRY, _24H),
        "card_small_txn_count_24h": w.total(_SMALL_N, _24H),
    }
    return _snapshots("card", w, features)


def _merchant_features(events: DataFrame, end_hour: int) -> DataFrame:
    key = schema.MERCHANT_JOIN_KEY
    hourly = _hourly(events, key, end_hour, with_labels=True, distinct=[])
    w = _Windows(hourly, key, summed=[_N, _AMOUNT_SUM, _MATURED_N, _FRAUD_N])
    count_7d = w.count(_7D)
    features = {
        "merchant_txn_count_24h": w.count(_24H),
        "merchant_txn_count_7d": count_7d,
        "merchant_amount_mean_7d": _ratio(w.total(_AMOUNT_SUM, _7D), count_7d),
        **_label_features(w, "merchant"),
    }
    return _snapshots("merchant", w, features)


def _empty(spark: SparkSession, entity: str) -> DataFrame:
    """A snapshot table with no rows, in the output schema."""
    from pyspark.sql.types import (
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    fields = [
        StructField(schema.ENTITY_JOIN_KEYS[entity], StringType()),
        StructField(schema.EVENT_TIMESTAMP, TimestampType()),
        StructField(schema.CREATED_TIMESTAMP, TimestampType()),
    ]
    for name in schema.ENTITY_FEATURES[entity]:
        dtype = LongType() if schema.feature_dtype(name) == "int64" else DoubleType()
        fields.append(StructField(name, dtype))
    return spark.createDataFrame([], StructType(fields))


def aggregate_spark(transactions: DataFrame, end: datetime | None = None) -> dict[str, DataFrame]:
    """Hourly feature snapshots per entity as Spark frames keyed "ip", "card", "merchant".

    The Spark counterpart of ``aggregate``: same rows, same columns (join key,
    ``event_timestamp``, ``created_timestamp``, ``schema.ENTITY_FEATURES[entity]``; counts
    long, others double, no nulls). ``end`` (naive means UTC) drops snapshots later than it; by
    default it is the hour after the hour of the latest event. Runs one small action (input
    checks, latest event); the tables themselves are lazy, and each one reads ``transactions``:
    cache it when evaluating several.
    """
    latest_hour = _scan(transactions)
    if latest_hour is None:
        spark = transactions.sparkSession
        return {entity: _empty(spark, entity) for entity in schema.ENTITY_JOIN_KEYS}
    events = _events(transactions)
    end_hour = _end_hour(latest_hour, end)
    return {
        "ip": _ip_features(events, end_hour),
        "card": _card_features(events, end_hour),
        "merchant": _merchant_features(events, end_hour),
    }


def write_feature_tables_spark(tables: dict[str, DataFrame], out_dir: Path) -> list[Path]:
    """Write each table as the single parquet file the feature repository's sources name.

    Rows sorted by join key and time. One file per table keeps the repository's sources
    (``<entity>_features.parquet``) the same for both engines and readable by every offline
    store; Spark writes it into a scratch folder next to the target and the file is moved into
    place, replacing the previous one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for entity, file_name in schema.TABLE_FILES.items():
        key = schema.ENTITY_JOIN_KEYS[entity]
        target = out_dir / file_name
        scratch = Path(tempfile.mkdtemp(prefix=f".{entity}-", dir=out_dir))
        try:
            (
                tables[entity]
                # One partition sorted locally: a global orderBy would first sample its
                # input, i.e. compute the whole table twice.
                .repartition(1)
                .sortWithinPartitions(key, schema.EVENT_TIMESTAMP)
                .write.mode("overwrite")
                .parquet(str(scratch / "table"))
            )
            (part,) = sorted((scratch / "table").glob("part-*.parquet"))
            part.replace(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        paths.append(target)
    return paths


def aggregate_file(
    spark: SparkSession, transactions: Path, out_dir: Path, end: datetime | None = None
) -> dict[str, int]:
    """Read transactions from parquet, write the three feature tables; rows per table."""
    # Cached: the three tables and the input checks each read the transactions.
    frame = spark.read.parquet(str(transactions)).cache()
    try:
        write_feature_tables_spark(aggregate_spark(frame, end=end), out_dir)
    finally:
        frame.unpersist()
    return {
        entity: spark.read.parquet(str(Path(out_dir) / name)).count()
        for entity, name in schema.TABLE_FILES.items()
    }
