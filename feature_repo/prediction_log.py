"""The prediction log: one row per answer, as date-partitioned parquet.

The scoring service writes it (off the hot path); ``python -m models monitor`` joins it with
labels as they mature; a Feast ``FileSource`` can read it (``ts`` is its timestamp column). Both
sides import the schema from here, so a renamed column breaks a test rather than a report.

Layout: ``<root>/date=YYYY-MM-DD/<file>.parquet`` (hive partitioning on the UTC day of ``ts``).
Columns (entity keys are one string column per join key of the domain, named by the key):

=================  ==========================  ===============================================
column             type                        meaning
=================  ==========================  ===============================================
request_id         string                      the request id of the answer
business_id        string                      the caller's id of the thing scored (e.g. the
                                               transaction id): what labels join on
ts                 timestamp[us, UTC]          when the answer was given
domain             string                      business domain (e.g. "fraud")
deployment         string                      deployment that answered
variant            string                      champion, challenger or shadow name
model_version      string                      ``name/version`` of the package
<join keys>        string                      entity keys, null when not part of the request
features           list<float32>               the model's input vector (NaN: missing)
feature_names      list<string>                names of ``features``, in the same order
statuses           map<string, string>         join key -> present / missing / stale /
                                               not_requested
age_seconds        map<string, float64>        join key -> age of the row read (null: none)
score              float64                     model score (null: no model answer)
label              string                      business label
reasons            list<string>                reason codes of the answer
latency_ms         float64                     time to answer, in milliseconds
=================  ==========================  ===============================================

Only pyarrow here: the module sits at the bottom of the layers and is imported by the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

REQUEST_ID = "request_id"
BUSINESS_ID = "business_id"
TS = "ts"
DOMAIN = "domain"
DEPLOYMENT = "deployment"
VARIANT = "variant"
MODEL_VERSION = "model_version"
FEATURES = "features"
FEATURE_NAMES = "feature_names"
STATUSES = "statuses"
AGE_SECONDS = "age_seconds"
SCORE = "score"
LABEL = "label"
REASONS = "reasons"
LATENCY_MS = "latency_ms"
# Hive partition column (a folder level, not a column of the files).
DATE = "date"

_HEAD: list[pa.Field] = [
    pa.field(REQUEST_ID, pa.string(), nullable=False),
    pa.field(BUSINESS_ID, pa.string()),
    pa.field(TS, pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field(DOMAIN, pa.string(), nullable=False),
    pa.field(DEPLOYMENT, pa.string(), nullable=False),
    pa.field(VARIANT, pa.string(), nullable=False),
    pa.field(MODEL_VERSION, pa.string(), nullable=False),
]
_TAIL: list[pa.Field] = [
    pa.field(FEATURES, pa.list_(pa.float32())),
    pa.field(FEATURE_NAMES, pa.list_(pa.string())),
    pa.field(STATUSES, pa.map_(pa.string(), pa.string())),
    pa.field(AGE_SECONDS, pa.map_(pa.string(), pa.float64())),
    pa.field(SCORE, pa.float64()),
    pa.field(LABEL, pa.string(), nullable=False),
    pa.field(REASONS, pa.list_(pa.string())),
    pa.field(LATENCY_MS, pa.float64()),
]
#: Columns every log has, whatever the domain's entities.
FIXED_COLUMNS: frozenset[str] = frozenset(f.name for f in [*_HEAD, *_TAIL])


def schema(join_keys: Sequence[str]) -> pa.Schema:
    """The log schema of a domain whose entities have these join keys."""
    clash = FIXED_COLUMNS.intersection(join_keys)
    if clash:
        raise ValueError(f"join keys {sorted(clash)} clash with prediction-log columns")
    keys = [pa.field(key, pa.string()) for key in join_keys]
    return pa.schema([*_HEAD, *keys, *_TAIL])


def join_key_columns(log_schema: pa.Schema) -> list[str]:
    """The entity-key columns of a log schema (every column that is not a fixed one)."""
    return [name for name in log_schema.names if name not in FIXED_COLUMNS and name != DATE]


def day_of(ts: datetime) -> str:
    """The partition value (UTC day) of a timestamp; a naive one is taken as UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%d")


def write(root: Path, table: pa.Table, basename: str) -> list[Path]:
    """Write rows into their day partitions as ``<root>/date=<day>/<basename>.parquet``.

    The table must have the log schema; one file per day present in it. Writes go to a
    temporary name first and are renamed into place, so a reader never sees half a file.
    """
    days = pc.strftime(table[TS], format="%Y-%m-%d", locale="C")
    written = []
    for day in sorted(set(days.to_pylist())):
        part = table.filter(pc.equal(days, day))
        folder = Path(root) / f"{DATE}={day}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{basename}.parquet"
        staging = folder / f".{basename}.parquet.tmp"
        pq.write_table(part, staging)
        staging.replace(target)
        written.append(target)
    return written


def read(
    root: Path, columns: Sequence[str] | None = None, where: pc.Expression | None = None
) -> pa.Table:
    """Every row of the log (hidden and temporary files are skipped), with its ``date``; with
    ``where`` (a pyarrow expression, e.g. ``pc.field(BUSINESS_ID) == "tx_1"``) only the rows
    it keeps, pushed down to the parquet scan."""
    dataset = ds.dataset(
        str(root),
        format="parquet",
        partitioning=ds.partitioning(pa.schema([pa.field(DATE, pa.string())]), flavor="hive"),
        exclude_invalid_files=True,
        ignore_prefixes=[".", "_"],
    )
    return dataset.to_table(columns=list(columns) if columns is not None else None, filter=where)
