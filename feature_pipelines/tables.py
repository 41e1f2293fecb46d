"""Writing offline feature tables the way every Feast offline store can read them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd


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


def write_feature_tables(
    tables: Mapping[str, pd.DataFrame], out_dir: Path, files: Mapping[str, str]
) -> list[Path]:
    """Write ``tables[name]`` to ``out_dir / files[name]`` for every name of ``files``."""
    return [write_feature_table(tables[name], Path(out_dir) / file) for name, file in files.items()]
