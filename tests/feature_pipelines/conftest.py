"""Fixtures of the pipelines' tests: the Spark session of the package's Spark tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.feature_pipelines.spark_helpers import start_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="package")
def spark() -> Iterator[SparkSession]:
    """The package's SparkSession: started by the first test that asks for it (only
    ``spark``-marked tests do), stopped after the package's last test."""
    yield from start_spark()
