"""Parquet tables as offline sources of whichever offline store the repository is configured with.

Feast's file-based offline stores (``duckdb``, ``dask``, ``file``) read ``FileSource`` only and
its Spark offline store reads ``SparkSource`` only (each asserts the class), so one definition
cannot serve both. A repository's definitions call ``parquet_source`` and get the class the
store of the ``feature_store`` yaml in use reads, for the same parquet file: the yaml Feast's CLI
reads, i.e. ``$FEAST_FS_YAML_FILE_PATH`` when set (relative to the working directory, as Feast
resolves it, or to the repository), else the repository's ``feature_store.yaml``.

Select a Spark yaml through that variable, not through ``feast -f``, which Feast does not pass
on to the definitions:

    FEAST_FS_YAML_FILE_PATH=feature_store.spark.yaml feast apply

Each yaml has a registry of its own, so the two kinds of sources never meet in one registry.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from feast.data_source import DataSource
from feast.infra.offline_stores.file_source import FileSource

#: Feast's environment variable naming the ``feature_store`` yaml its CLI reads.
FS_YAML_ENV = "FEAST_FS_YAML_FILE_PATH"
# Offline store types whose sources are SparkSource.
_SPARK_STORES = {"spark"}


def feature_store_yaml(repo: Path) -> Path:
    """The ``feature_store`` yaml in use for the repository at ``repo``."""
    configured = os.environ.get(FS_YAML_ENV)
    if not configured:
        return Path(repo) / "feature_store.yaml"
    path = Path(configured)
    if path.is_absolute() or path.exists():
        return path
    return Path(repo) / path


def offline_store_type(repo: Path) -> str:
    """``offline_store.type`` of the yaml in use (Feast's default ``dask`` when absent)."""
    path = feature_store_yaml(repo)
    if not path.is_file():
        return "dask"
    store = (yaml.safe_load(path.read_text()) or {}).get("offline_store") or {}
    if isinstance(store, str):  # the short form `offline_store: spark`
        return store
    return str(store.get("type", "dask"))


def parquet_source(
    repo: Path,
    name: str,
    path: Path,
    timestamp_field: str,
    created_timestamp_column: str = "",
    description: str = "",
) -> DataSource:
    """A parquet table as the source class the configured offline store reads."""
    if offline_store_type(repo) in _SPARK_STORES:
        # Imported only here: the Spark source class belongs to an optional contrib module.
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
            SparkSource,
        )

        return SparkSource(
            name=name,
            path=str(path),
            file_format="parquet",
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            description=description,
        )
    return FileSource(
        name=name,
        path=str(path),
        timestamp_field=timestamp_field,
        created_timestamp_column=created_timestamp_column,
        description=description,
    )
