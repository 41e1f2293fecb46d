"""Offline feature tables: microsecond UTC timestamps, one file per named table."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_pipelines.tables import write_feature_table, write_feature_tables


def test_timestamps_are_written_as_utc_microseconds(tmp_path) -> None:
    frame = pd.DataFrame(
        {
            "key": ["a"],
            "event_timestamp": pd.to_datetime(["2026-01-01 00:00:00.123456789"], utc=True),
            "naive": pd.to_datetime(["2026-01-01 00:00:00"]),
        }
    )
    path = write_feature_table(frame, tmp_path / "sub" / "t.parquet")
    schema = pq.read_schema(path)
    for column in ("event_timestamp", "naive"):
        assert str(schema.field(column).type) == "timestamp[us, tz=UTC]"


def test_each_named_table_goes_to_its_file(tmp_path) -> None:
    tables = {"a": pd.DataFrame({"x": [1]}), "b": pd.DataFrame({"x": [2]})}
    written = write_feature_tables(tables, tmp_path, {"a": "a.parquet", "b": "b_file.parquet"})
    assert [p.name for p in written] == ["a.parquet", "b_file.parquet"]
    assert pd.read_parquet(written[1])["x"].tolist() == [2]
    with pytest.raises(KeyError):
        write_feature_tables(tables, tmp_path, {"c": "c.parquet"})
