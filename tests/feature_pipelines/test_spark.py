"""The Spark session helper: its local configuration (no JVM needed) and the session it starts."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from feature_pipelines.spark import SPARK_CONF, local_conf, spark_session
from tests.conftest import FEATURE_REPO
from tests.feature_pipelines.spark_helpers import SPARK_MARKS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_local_conf_defaults_bound_a_small_machine() -> None:
    assert local_conf() == {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.master": "local[2]",
        "spark.driver.memory": "2g",
        "spark.sql.shuffle.partitions": "4",
        "spark.default.parallelism": "4",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.local.dir": str(Path(tempfile.gettempdir()) / "spark-local"),
        "spark.driver.maxResultSize": "1g",
    }


def test_local_conf_scales_with_cores_and_takes_explicit_partitions() -> None:
    conf = local_conf(cores=3, memory="512m")
    assert conf["spark.master"] == "local[3]"
    assert conf["spark.driver.memory"] == "512m"
    assert conf["spark.sql.shuffle.partitions"] == "6"
    assert conf["spark.default.parallelism"] == "6"
    explicit = local_conf(cores=3, shuffle_partitions=7)
    assert explicit["spark.sql.shuffle.partitions"] == "7"
    assert explicit["spark.default.parallelism"] == "6"


@pytest.mark.parametrize("cores", [1, 2, 8])
def test_local_conf_keeps_the_semantics_every_job_relies_on(cores: int) -> None:
    conf = local_conf(cores=cores, shuffle_partitions=1)
    assert {key: conf[key] for key in SPARK_CONF} == SPARK_CONF


def test_feast_spark_yaml_reads_timestamps_as_the_pipelines_do() -> None:
    """Feast's Spark store (training, materialization) and the pipelines agree on what every
    setting they both give means: UTC above all, since Feast writes UTC time literals."""
    text = (FEATURE_REPO / "feature_store.spark.yaml").read_text()
    config = yaml.safe_load(text)
    for section in (config["offline_store"], config["batch_engine"]):
        shared = {k: v for k, v in section["spark_conf"].items() if k in SPARK_CONF}
        assert shared["spark.sql.session.timeZone"] == "UTC"
        assert shared == {k: SPARK_CONF[k] for k in shared}


class TestStartedSession:
    """What the session started by ``spark_session`` runs with (one JVM for the package)."""

    pytestmark = SPARK_MARKS

    def test_the_session_runs_with_the_local_conf(self, spark: SparkSession) -> None:
        conf = spark.sparkContext.getConf()
        for key, value in local_conf().items():
            assert conf.get(key) == value, key
        assert spark.conf.get("spark.sql.session.timeZone") == "UTC"

    def test_a_second_call_returns_the_running_session(self, spark: SparkSession) -> None:
        """Spark allows one session per process: resources apply only when the JVM starts."""
        again = spark_session(memory="1g", app_name="other")
        assert again is spark
        conf = again.sparkContext.getConf()
        assert conf.get("spark.driver.memory") == "2g"
        assert conf.get("spark.app.name") == "feature-pipelines"

    def test_python_workers_run_this_interpreter(self, spark: SparkSession) -> None:
        """Workers start ``$PYSPARK_PYTHON``, which the helper sets to this interpreter unless
        the environment chose one."""
        configured = os.environ["PYSPARK_PYTHON"]
        rows = spark.sparkContext.parallelize([0], 1).map(lambda _: sys.executable).collect()
        assert [os.path.realpath(r) for r in rows] == [os.path.realpath(configured)]
