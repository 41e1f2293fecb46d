"""A local Spark session for the pipelines: bounded, quiet, UTC.

Spark is an optional engine (``pip install '.[spark]'`` plus a Java 17 runtime); nothing here is
imported unless a caller asks for Spark. On a cluster, ``spark-submit`` decides the master and
resources, and jobs only add ``SPARK_CONF``'s settings, on which their results depend (UTC,
timestamp type).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Settings every job relies on, whatever the deployment: the semantics of the results.
SPARK_CONF: dict[str, str] = {
    # Hour boundaries and `TIMESTAMP('...')` literals (Feast's queries) are meant as UTC.
    "spark.sql.session.timeZone": "UTC",
    # Parquet timestamps as INT64 microseconds (UTC-adjusted), as the pandas engine writes them
    # and DuckDB reads them; Spark's default INT96 is legacy.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # Columnar transfer between the JVM and pandas (toPandas / createDataFrame).
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def local_conf(
    cores: int = 2, memory: str = "2g", shuffle_partitions: int | None = None
) -> dict[str, str]:
    """Configuration of a single-machine session: ``cores`` threads, ``memory`` of driver heap.

    Shuffle partitions default to twice the cores: Spark's 200 would mean 200 tiny tasks per
    shuffle, whose scheduling dominates on small inputs.
    """
    return {
        **SPARK_CONF,
        "spark.master": f"local[{cores}]",
        "spark.driver.memory": memory,
        "spark.sql.shuffle.partitions": str(shuffle_partitions or 2 * cores),
        "spark.default.parallelism": str(2 * cores),
        # No web UI, no progress bars on the console: a batch job, not an interactive shell.
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Loopback only: the driver needs no resolvable host name and opens no outside port.
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.local.dir": os.path.join(tempfile.gettempdir(), "spark-local"),
        # Pandas-sized results only leave the JVM through Arrow; cap what one collect may bring.
        "spark.driver.maxResultSize": "1g",
    }


def spark_session(
    cores: int = 2,
    memory: str = "2g",
    shuffle_partitions: int | None = None,
    app_name: str = "feature-pipelines",
) -> SparkSession:
    """The Spark session of this process: the submitted one under ``spark-submit``, else local.

    Under ``spark-submit`` the JVM is already running with the master and resources it was
    given (pyspark connects to it through ``PYSPARK_GATEWAY_PORT``); only ``SPARK_CONF`` is
    applied. Otherwise a local session with ``local_conf`` is started, or the one already
    running in the process is returned (Spark allows one per process; driver memory only
    applies when this call starts the JVM).
    """
    from pyspark.sql import SparkSession

    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if not submitted:
        # Python workers (Feast's writes to the online store run in them) start this
        # interpreter, with its packages, not the first `python3` on the PATH; pyspark reads
        # only the variable, when the context starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = SPARK_CONF if submitted else local_conf(cores, memory, shuffle_partitions)
    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
