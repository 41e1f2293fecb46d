"""Fixtures of the fraud repository's Spark tests: a SparkSession for the package and the
repository over the 100k tables, applied with the DuckDB default and with the Spark yaml.

Nothing here starts Spark or builds the 100k input unless a ``spark``-marked test asks for it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from feature_pipelines.fraud.schema import TABLE_FILES
from feature_pipelines.fraud.windows import CATALOGUE as WINDOWS
from feature_pipelines.streaming.replay import stream_tables
from tests.conftest import copy_repo, feast_cli
from tests.feature_pipelines.spark_helpers import (
    feature_tables_100k,
    start_spark,
    transactions_100k,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPARK_YAML = "feature_store.spark.yaml"


@pytest.fixture(scope="package")
def spark() -> Iterator[SparkSession]:
    """The package's SparkSession: local[2], UTC, bounded memory (feature_pipelines.spark)."""
    yield from start_spark()


@pytest.fixture(scope="package", name="transactions_100k")
def transactions_100k_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100,000 generated transactions (fixed seed and end) as parquet."""
    return transactions_100k(tmp_path_factory)


@pytest.fixture(scope="package")
def spark_repo(
    spark: SparkSession,
    transactions_100k: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The fraud repository over the 100k tables, applied with both the DuckDB default and the
    Spark yaml (registries of their own, the same parquet files)."""
    tables = feature_tables_100k(tmp_path_factory, "pandas")
    batch = {e: pd.read_parquet(tables / f) for e, f in TABLE_FILES.items()}
    stream = stream_tables(WINDOWS, pd.read_parquet(transactions_100k))
    repo = copy_repo(tmp_path_factory.mktemp("spark_repo") / "feature_repo", {**batch, **stream})
    feast_cli(repo, "apply")
    # The variable, not only -f: the definitions read it to declare SparkSource tables.
    spark_env = {"FEAST_FS_YAML_FILE_PATH": SPARK_YAML, "PYSPARK_PYTHON": sys.executable}
    # Without source validation: it would start a JVM in the CLI's process only to read the
    # parquet schemas, which the retrieval and materialization tests read anyway.
    feast_cli(repo, "apply", "--skip-source-validation", yaml=SPARK_YAML, env=spark_env)
    return repo
