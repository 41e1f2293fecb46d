"""Spark test inputs shared by the pipelines' and the feature repository's Spark tests.

A local SparkSession per test package (``start_spark``), and one 100,000-transaction input with
its pandas feature tables for the whole test session: generated with the pipelines' own CLI,
with a fixed seed and end, so every run (and every engine) sees the same transactions. The
inputs are memoized on the session's base temporary folder, so the two packages that use them
build them once.
"""

from __future__ import annotations

import functools
import shutil
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from feature_pipelines.cli import app

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ROWS = 100_000
SEED = 7
END = "2024-06-01T00:00:00"
ENGINES = ("pandas", "spark")

SPARK_MARKS = [
    pytest.mark.spark,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    # pyspark 4.0 leaves the sockets of its JVM -> Python transfers to the garbage collector
    # (SPARK-54247, fixed in 4.2): a warning about pyspark's internals, not about this code.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]


def run_cli(*args: str) -> str:
    """Run a feature_pipelines command in process (the Spark one reuses the session)."""
    result = CliRunner().invoke(app, list(args))
    if result.exit_code != 0:
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"feature_pipelines {' '.join(args)} failed:\n{result.output}\n{trace}")
    return result.output


def start_spark() -> Iterator[SparkSession]:
    """The local SparkSession of ``feature_pipelines.spark`` (local[2], UTC, bounded memory),
    stopped when the generator is closed."""
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


@functools.cache
def _transactions(base: Path) -> Path:
    path = base / "spark_inputs" / "transactions.parquet"
    run_cli("generate", "--rows", str(ROWS), "--seed", str(SEED), "--end", END, "--out", str(path))
    return path


@functools.cache
def _tables(base: Path, engine: str) -> Path:
    folder = base / "spark_inputs" / f"tables_{engine}"
    run_cli(
        "aggregate",
        "--engine",
        engine,
        "--transactions",
        str(_transactions(base)),
        "--out-dir",
        str(folder),
    )
    return folder


def transactions_100k(factory: pytest.TempPathFactory) -> Path:
    """100,000 generated transactions (fixed seed and end) as parquet, once per session."""
    return _transactions(factory.getbasetemp())


def feature_tables_100k(factory: pytest.TempPathFactory, engine: str) -> Path:
    """``aggregate --engine <engine>`` on the 100k input: the folder of its feature tables.

    The Spark engine runs in the session that is active when it is first asked for.
    """
    return _tables(factory.getbasetemp(), engine)
