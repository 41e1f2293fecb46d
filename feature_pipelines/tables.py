"""Writing offline feature tables the way every Feast offline store can read them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from feature_pipelines.schema import ENTITY_JOIN_KEYS

# File name of each entity's table inside the feature repository's data folder.
TABLE_FILES = {entity: f"{entity}_features.parquet" for entity in ENTITY_JOIN_KEYS}


def write_feature_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write one table with UTC timestamps in microseconds.

    DuckDB (Feast's duckdb offline store) cannot cast nanosecond time-zone-aware timestamps,
    and microseconds are all the precision event times need.
    """
    out = frame.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(
            out[column]
        ):
            out[column] = pd.to_datetime(out[column], utc=True).astype("datetime64[us, UTC]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(path, index=False)
    return path


def write_feature_tables(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Write the ip / card / merchant tables into a repository's data folder."""
    return [write_feature_table(tables[k], Path(out_dir) / f) for k, f in TABLE_FILES.items()]
