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

Entity keys are pseudonymized by default: the service writes ``pseudonymize(id, key)`` (a
keyed hash) in place of each entity id, so whoever joins or groups the log by entity computes
the same hash with the same key (:func:`pseudonymize`), and the log never holds the ids.
Files are readable by their writer's user only, and partitions past the retention period are
deleted (:func:`expired_partitions`).

Only pyarrow here: the module sits at the bottom of the layers and is imported by the service.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
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


#: Folders and files of the log: its writer's user only (IP addresses and card ids are personal
#: data even when pseudonymized, and scores are business secrets).
FOLDER_MODE = 0o700
FILE_MODE = 0o600
KEY_FILE = "_pseudonym.key"


def private_folder(path: Path) -> Path:
    """Create ``path`` (and missing parents) readable by this user only; tighten it if it
    exists."""
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    os.chmod(path, FOLDER_MODE)
    return path


def pseudonymize(value: str, key: bytes) -> str:
    """The keyed hash the log keeps in place of an entity id: HMAC-SHA256 under ``key``, its
    first 128 bits in hex. Without the key it cannot be reversed or recomputed."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def pseudonym_key(root: Path) -> bytes:
    """The log's pseudonym key from ``<root>/_pseudonym.key``, made (32 random bytes, readable
    by this user only) when there is none."""
    path = private_folder(Path(root)) / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        fd = -1
    if fd >= 0:
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "w") as out:
            out.write(key.hex())
        return key
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError(
            f"{path} does not hold a hex key of 16 bytes or more; restore it, or delete it to "
            "start a new one (entity hashes will then differ from the older partitions')"
        )
    return key


def expired_partitions(root: Path, retention_days: int, now: datetime) -> list[Path]:
    """Day partitions whose whole day is older than ``retention_days`` before ``now``."""
    oldest = day_of(now - timedelta(days=retention_days))
    folders = Path(root).glob(f"{DATE}=*") if Path(root).is_dir() else []
    return sorted(p for p in folders if p.is_dir() and p.name.removeprefix(f"{DATE}=") < oldest)


def write(root: Path, table: pa.Table, basename: str) -> list[Path]:
    """Write rows into their day partitions as ``<root>/date=<day>/<basename>.parquet``.

    The table must have the log schema; one file per day present in it. Writes go to a
    temporary name first and are renamed into place, so a reader never sees half a file; files
    and folders are this user's only.
    """
    days = pc.strftime(table[TS], format="%Y-%m-%d", locale="C")
    written = []
    for day in sorted(set(days.to_pylist())):
        part = table.filter(pc.equal(days, day))
        folder = private_folder(Path(root) / f"{DATE}={day}")
        target = folder / f"{basename}.parquet"
        staging = folder / f".{basename}.parquet.tmp"
        pq.write_table(part, staging)
        os.chmod(staging, FILE_MODE)
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
