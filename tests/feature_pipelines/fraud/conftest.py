"""Fixtures of the fraud pipelines' Spark tests: the 100k input and each engine's tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.feature_pipelines.spark_helpers import ENGINES, feature_tables_100k, transactions_100k

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="package", name="transactions_100k")
def transactions_100k_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100,000 generated transactions (fixed seed and end) as parquet."""
    return transactions_100k(tmp_path_factory)


@pytest.fixture(scope="package")
def engine_tables(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``aggregate --engine E`` on the 100k input, for each engine: engine -> output folder."""
    return {engine: feature_tables_100k(tmp_path_factory, engine) for engine in ENGINES}
