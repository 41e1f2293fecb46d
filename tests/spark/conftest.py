"""Spark engine fixtures: one local SparkSession for the package, one 100k-transaction input.

The JVM starts once (package scope) and stops when the package's tests are done, so the rest of
a test run does not carry it. The input is generated with the pipelines' own CLI, with a fixed
seed and end, so every run (and every engine) sees the same 100,000 transactions.
"""

from __future__ import annotations

import shutil
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from typer.testing import CliRunner

from feature_pipelines.cli import app
from feature_pipelines.fraud.schema import TABLE_FILES
from feature_pipelines.fraud.windows import CATALOGUE as WINDOWS
from feature_pipelines.streaming.replay import stream_tables
from tests.conftest import copy_repo, feast_cli

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ROWS = 100_000
SEED = 7
END = "2024-06-01T00:00:00"
SPARK_YAML = "feature_store.spark.yaml"
ENGINES = ("pandas", "spark")


def run_cli(*args: str) -> str:
    """Run a feature_pipelines command in process (the Spark one reuses the session)."""
    result = CliRunner().invoke(app, list(args))
    if result.exit_code != 0:
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"feature_pipelines {' '.join(args)} failed:\n{result.output}\n{trace}")
    return result.output


@pytest.fixture(scope="package")
def spark() -> Iterator[SparkSession]:
    """The package's SparkSession: local[2], UTC, bounded memory (feature_pipelines.spark)."""
    if shutil.which("java") is None:
        pytest.fail(
            "java is not installed; run `make setup` (apt-get install openjdk-17-jre-headless)"
        )
    from feature_pipelines.spark import spark_session

    session = spark_session()
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture(scope="package")
def transactions_100k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100,000 generated transactions (fixed seed and end) as parquet."""
    path = tmp_path_factory.mktemp("spark_raw") / "transactions.parquet"
    run_cli("generate", "--rows", str(ROWS), "--seed", str(SEED), "--end", END, "--out", str(path))
    return path


@pytest.fixture(scope="package")
def engine_tables(
    spark: SparkSession, transactions_100k: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """``aggregate --engine E`` on the 100k input, for each engine: engine -> output folder."""
    out = {}
    for engine in ENGINES:
        folder = tmp_path_factory.mktemp(f"tables_{engine}")
        run_cli(
            "aggregate",
            "--engine",
            engine,
            "--transactions",
            str(transactions_100k),
            "--out-dir",
            str(folder),
        )
        out[engine] = folder
    return out


@pytest.fixture(scope="package")
def spark_repo(
    spark: SparkSession,
    engine_tables: dict[str, Path],
    transactions_100k: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The fraud repository over the 100k tables, applied with both the DuckDB default and the
    Spark yaml (registries of their own, the same parquet files)."""
    batch = {e: pd.read_parquet(engine_tables["pandas"] / f) for e, f in TABLE_FILES.items()}
    stream = stream_tables(WINDOWS, pd.read_parquet(transactions_100k))
    repo = copy_repo(tmp_path_factory.mktemp("spark_repo") / "feature_repo", {**batch, **stream})
    feast_cli(repo, "apply")
    # The variable, not only -f: the definitions read it to declare SparkSource tables.
    spark_env = {"FEAST_FS_YAML_FILE_PATH": SPARK_YAML, "PYSPARK_PYTHON": sys.executable}
    # Without source validation: it would start a JVM in the CLI's process only to read the
    # parquet schemas, which the retrieval and materialization tests read anyway.
    feast_cli(repo, "apply", "--skip-source-validation", yaml=SPARK_YAML, env=spark_env)
    return repo
