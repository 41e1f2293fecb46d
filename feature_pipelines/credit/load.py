"""Load Feast's credit-scoring tutorial data into the credit domain's offline store.

The source folder holds the files of Feast's credit-scoring tutorial, unchanged. By default it is
``source_data/`` beside this module, part of the repository and of the installed package, with
the files' origin, licence and checksums (``SOURCE.md``, ``LICENSE``); ``--source`` or
``CREDIT_DATA_DIR`` names another folder of the same files. This step cleans them and writes,
into ``feature_repo/credit/data/``:

- ``zipcode_features.parquet`` and ``credit_history.parquet``: the offline sources of the
  feature views (``feature_repo/credit/data_sources.py``);
- ``loan_applications.parquet``: the labelled applications training reads (``training_data`` of
  ``feature_repo/credit/domain.yaml``), every request field checked against its declaration.

Cleaning, as found in the data:

- ``person_age`` and ``person_emp_length`` above 100 (years) are entry errors: they become
  missing. The request fields refuse them (``le: 100``), so training and serving agree: a value
  serving would refuse is one training does not learn from.
- ZIP codes are numbers in the files; they become five-digit text (``1001`` -> ``01001``), the
  form of the ``zipcode`` entity key and request field.
- Category fields go through their declared unknown treatment (the data holds only known values).
- The credit history's event time is one snapshot (2020-04-26), earlier than every application
  (2020-08-25 on), so every application sees it. A history row without an event time is dated
  one day before the earliest application, for the same reason.

Timestamps are written as microseconds in UTC (DuckDB, Feast's offline store here, cannot cast
nanosecond time-zone-aware ones).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_pipelines.tables import write_feature_table
from feature_repo.domain import DomainSpec, load_domain

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ENV = "CREDIT_DATA_DIR"
# The tutorial's files ship with the code (package data), so a clone or an install has them.
DEFAULT_SOURCE = Path(__file__).resolve().parent / "source_data"
DEFAULT_REPO = ROOT / "feature_repo" / "credit"

LOANS_FILE = "loan_table.parquet"
ZIPCODES_FILE = "zipcode_table.parquet"
HISTORY_FILE = "credit_history_sample.csv"
# Offline sources of the feature views (feature_repo/credit/data_sources.py).
ZIPCODE_TABLE = "zipcode_features.parquet"
HISTORY_TABLE = "credit_history.parquet"

ZIPCODE_FEATURES = ["tax_returns_filed", "population", "total_wages"]
HISTORY_FEATURES = [
    "credit_card_due",
    "mortgage_due",
    "student_loan_due",
    "vehicle_loan_due",
    "hard_pulls",
    "missed_payments_2y",
    "missed_payments_1y",
    "missed_payments_6m",
    "bankruptcies",
]
# Years above this are entry errors (person_age 144, person_emp_length 123 in the data).
MAX_YEARS = 100
YEARS_FIELDS = ("person_age", "person_emp_length")
CREATED = "created_timestamp"


def source_dir(explicit: Path | None = None) -> Path:
    """Folder of the source files: the argument, else ``CREDIT_DATA_DIR``, else the default."""
    if explicit is not None:
        return Path(explicit)
    from_env = os.environ.get(SOURCE_ENV)
    return Path(from_env) if from_env else DEFAULT_SOURCE


@dataclass(frozen=True)
class LoadResult:
    """What one load wrote, and what the cleaning changed."""

    applications: Path
    zipcodes: Path
    histories: Path
    n_applications: int
    n_zipcodes: int
    n_histories: int
    cleared: dict[str, int]  # field -> values above MAX_YEARS made missing
    history_coverage: float  # share of applications whose applicant has a credit history
    default_rate: float

    def summary(self) -> str:
        """Human-readable account of the load."""
        cleared = ", ".join(f"{n} {field}" for field, n in self.cleared.items())
        return "\n".join(
            [
                f"applications   {self.n_applications:,} -> {self.applications} "
                f"(default rate {self.default_rate:.4f})",
                f"zipcodes       {self.n_zipcodes:,} -> {self.zipcodes}",
                f"credit history {self.n_histories:,} -> {self.histories} "
                f"(covers {self.history_coverage:.1%} of applications)",
                f"cleaned        values above {MAX_YEARS} years made missing: {cleared}",
            ]
        )


def _read(source: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    missing = [f for f in (LOANS_FILE, ZIPCODES_FILE, HISTORY_FILE) if not (source / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{source} lacks {', '.join(missing)}: point --source or {SOURCE_ENV} at the folder "
            "holding Feast's credit-scoring tutorial data"
        )
    return (
        pd.read_parquet(source / LOANS_FILE),
        pd.read_parquet(source / ZIPCODES_FILE),
        pd.read_csv(source / HISTORY_FILE),
    )


def zip_text(values: pd.Series) -> pd.Series:
    """ZIP codes as five-digit text (numbers lose their leading zeros)."""
    return values.astype("int64").astype(str).str.zfill(5)


def _utc(values: pd.Series) -> pd.Series:
    """Timestamps in UTC (naive ones are taken as UTC)."""
    return pd.to_datetime(values, utc=True)


def clean_applications(
    loans: pd.DataFrame, spec: DomainSpec
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Applications as requests would carry them, plus label and times; and what was cleared.

    Raises ValueError naming the field and an example when a value breaks its declaration in
    a way the documented cleaning does not cover.
    """
    frame = loans.copy()
    frame[spec.business_id] = frame[spec.business_id].astype(str)
    frame["zipcode"] = zip_text(frame["zipcode"])
    cleared = {}
    for column in YEARS_FIELDS:
        values = frame[column].astype("float64")
        too_many = values > MAX_YEARS
        cleared[column] = int(too_many.sum())
        frame[column] = values.mask(too_many)
    for name, field in spec.request_fields.items():
        if name not in frame:
            if field.required:
                raise ValueError(f"applications lack the required field {name!r}")
            continue
        if field.kind in ("number", "integer"):
            frame[name] = frame[name].astype("float64")
        raw = frame[name].astype(object).where(frame[name].notna(), None).tolist()
        parsed: list[Any] = []
        refused: list[tuple[Any, str]] = []
        for value in raw:
            if value is None and name in cleared:
                parsed.append(None)  # cleared above: missing, though a request must carry it
                continue
            try:
                parsed.append(field.parse(value))
            except ValueError as exc:
                refused.append((value, str(exc)))
                parsed.append(None)
        if refused:
            value, why = refused[0]
            many = len(refused) > 1
            raise ValueError(
                f"{len(refused)} {'applications break' if many else 'application breaks'} "
                f"the declaration of {name!r}, e.g. {value!r}: {why}"
            )
        if field.kind in ("number", "integer"):
            frame[name] = np.asarray([np.nan if v is None else v for v in parsed], dtype="float64")
        else:
            frame[name] = pd.Series(parsed, index=frame.index, dtype=object)
    frame[spec.timestamp_field] = _utc(frame[spec.timestamp_field])
    frame[CREATED] = _utc(frame[CREATED])
    frame[spec.label_column] = frame[spec.label_column].astype("int8")
    columns = [
        spec.business_id,
        spec.timestamp_field,
        *[n for n in spec.request_fields if n in frame and n != spec.business_id],
        spec.label_column,
        CREATED,
    ]
    ordered = frame[columns].sort_values([spec.timestamp_field, spec.business_id])
    return ordered.reset_index(drop=True), cleared


def zipcode_table(zipcodes: pd.DataFrame) -> pd.DataFrame:
    """The zipcode_features source: text ZIP codes, numeric statistics, UTC times."""
    frame = zipcodes[["zipcode", *ZIPCODE_FEATURES, "event_timestamp", CREATED]].copy()
    frame["zipcode"] = zip_text(frame["zipcode"])
    for column in ZIPCODE_FEATURES:
        frame[column] = frame[column].astype("int64")
    frame["event_timestamp"] = _utc(frame["event_timestamp"])
    frame[CREATED] = _utc(frame[CREATED])
    return frame


def history_table(history: pd.DataFrame, first_application: pd.Timestamp) -> pd.DataFrame:
    """The credit_history source, dated so every application can see it (module docstring)."""
    frame = history[["dob_ssn", *HISTORY_FEATURES]].copy()
    frame["dob_ssn"] = frame["dob_ssn"].astype(str)
    for column in HISTORY_FEATURES:
        frame[column] = frame[column].astype("int64")
    fallback = first_application - pd.Timedelta(days=1)
    stamps = history.get("event_timestamp")
    event = _utc(stamps) if stamps is not None else pd.Series(pd.NaT, index=frame.index)
    frame["event_timestamp"] = event.fillna(fallback).astype("datetime64[us, UTC]")
    created = _utc(history[CREATED]) if CREATED in history else frame["event_timestamp"]
    frame[CREATED] = created.fillna(frame["event_timestamp"])
    return frame


def load(source: Path | None = None, repo: Path = DEFAULT_REPO) -> LoadResult:
    """Read the source files, clean them and write the credit repository's tables."""
    source = source_dir(source)
    spec = load_domain(repo)
    loans, zipcodes, history = _read(source)
    applications, cleared = clean_applications(loans, spec)
    zips = zipcode_table(zipcodes)
    histories = history_table(history, applications[spec.timestamp_field].min())
    data = Path(repo) / "data"
    paths = (
        write_feature_table(applications, spec.training_data_path),
        write_feature_table(zips, data / ZIPCODE_TABLE),
        write_feature_table(histories, data / HISTORY_TABLE),
    )
    result = LoadResult(
        applications=paths[0],
        zipcodes=paths[1],
        histories=paths[2],
        n_applications=len(applications),
        n_zipcodes=len(zips),
        n_histories=len(histories),
        cleared=cleared,
        history_coverage=float(applications["dob_ssn"].isin(histories["dob_ssn"]).mean()),
        default_rate=float(applications[spec.label_column].mean()),
    )
    logger.info("loaded credit data from %s", source)
    return result
