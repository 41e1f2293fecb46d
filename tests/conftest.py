"""Shared fixtures: small real artefacts built once per session.

A tiny generated dataset, a copy of the feature repository applied and materialized with the
plain Feast CLI (SQLite and a real redis-server), and a small trained model package. Nothing is
mocked: the redis-server binary runs on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis

from feature_pipelines.fraud.schema import TABLE_FILES
from feature_pipelines.fraud.windows import CATALOGUE as WINDOWS
from feature_pipelines.streaming.replay import (
    empty_stream_tables,
    stream_tables,
    write_stream_tables,
)
from feature_pipelines.tables import write_feature_tables
from feature_repo import clock
from tests.fixtures import processes

ROOT = Path(__file__).resolve().parent.parent
FEATURE_REPO = ROOT / "feature_repo" / "fraud"
FEAST = Path(sys.executable).parent / "feast"
TEST_ROWS = 20_000
TEST_SEED = 11


def pytest_configure(config: pytest.Config) -> None:
    """Start the platform's clock before any fixture reads it or starts a process.

    ``PLATFORM_CLOCK_AT`` places the whole run (this process and every process it starts) at
    another instant: ``make test-clock`` runs the time-sensitive tests at several.
    """
    clock.offset_seconds()


def pytest_report_header(config: pytest.Config) -> str:
    placed = " (placed by PLATFORM_CLOCK_AT)" if clock.offset_seconds() else ""
    return f"platform clock: {clock.now().isoformat(timespec='seconds')}{placed}"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    """A real redis-server process on loopback that tests can stop and start again."""

    port: int
    workdir: Path
    process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed; run `make setup` (apt-get install redis-server)"
            )
        self.process = processes.start(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stop_signal=signal.SIGKILL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    if client.ping():
                        break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()

    def stop(self) -> None:
        """SIGKILL: nothing is saved, and a frozen (SIGSTOP) server dies too."""
        if self.process is not None:
            processes.stop(self.process)
        self.process = None


@pytest.fixture(scope="session", autouse=True)
def stop_servers_left_running() -> Iterator[None]:
    """Servers that a fixture or test started and did not stop (a set-up that failed half-way,
    an interrupted run) are stopped when the session ends, after every other fixture."""
    yield
    processes.stop_all()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session."""
    server = RedisServer(port=free_port(), workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def data_end() -> datetime:
    """Generated data ends at the start of the current minute, so features are fresh."""
    return clock.now().replace(second=0, microsecond=0)


@pytest.fixture(scope="session")
def transactions(data_end: datetime) -> pd.DataFrame:
    """A small synthetic transaction history."""
    from feature_pipelines.fraud.generate import generate_transactions

    return generate_transactions(n_rows=TEST_ROWS, seed=TEST_SEED, days=35, end=data_end)


@pytest.fixture(scope="session")
def transactions_path(transactions: pd.DataFrame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("raw") / "transactions.parquet"
    transactions.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="session")
def feature_tables(transactions: pd.DataFrame, data_end: datetime) -> dict[str, pd.DataFrame]:
    """Hourly batch snapshots plus the streaming views' replayed rows ("ip_stream", ...)."""
    from feature_pipelines.fraud.aggregate import aggregate

    return {**aggregate(transactions, end=data_end), **stream_tables(WINDOWS, transactions)}


def copy_repo(target: Path, tables: dict[str, pd.DataFrame]) -> Path:
    """Copy the feature repository's definitions and write its offline sources."""
    target.mkdir(parents=True, exist_ok=True)
    for item in FEATURE_REPO.iterdir():
        if item.suffix in (".py", ".yaml") or item.name == ".feastignore":
            shutil.copy(item, target / item.name)
    write_feature_tables(tables, target / "data", TABLE_FILES)
    write_stream_tables(WINDOWS, tables, target / "data")
    return target


def feast_cli(repo: Path, *args: str, yaml: str = "feature_store.yaml", env=None):
    """Run the plain Feast CLI inside a repository; fail the test with its output on error."""
    result = subprocess.run(
        [str(FEAST), "-f", yaml, *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"feast {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def materialize_end(data_end: datetime) -> str:
    return (data_end + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture(scope="session")
def sqlite_repo(tmp_path_factory, feature_tables, data_end) -> Path:
    """Feature repo on the embedded default, applied and materialized with the Feast CLI."""
    repo = copy_repo(tmp_path_factory.mktemp("repo_sqlite") / "feature_repo", feature_tables)
    feast_cli(repo, "apply")
    feast_cli(repo, "materialize-incremental", materialize_end(data_end))
    return repo


@pytest.fixture(scope="session")
def redis_repo(tmp_path_factory, feature_tables, data_end, redis_server) -> Path:
    """The same repo on a real redis-server."""
    repo = copy_repo(tmp_path_factory.mktemp("repo_redis") / "feature_repo", feature_tables)
    env = {"REDIS_CONNECTION_STRING": redis_server.connection_string}
    os.environ.update(env)  # FeatureStore objects in this process expand it too
    feast_cli(repo, "apply", yaml="feature_store.redis.yaml", env=env)
    feast_cli(
        repo,
        "materialize-incremental",
        materialize_end(data_end),
        yaml="feature_store.redis.yaml",
        env=env,
    )
    return repo


@pytest.fixture(scope="session")
def model_root(tmp_path_factory, sqlite_repo, transactions_path) -> Path:
    """A small model package trained through the real pipeline."""
    from models.train import train

    root = tmp_path_factory.mktemp("packages")
    train(
        repo_path=sqlite_repo,
        events_path=transactions_path,
        output_root=root,
        num_boost_round=80,
    )
    return root


# --- real-time features: streaming views, on-demand views, model v2 ------------------------------

RIG_YAML = "feature_store.rig.yaml"


@dataclass
class StreamRig:
    """A feature repo on a redis-server of its own, applied once, for tests that write to its
    stores (stream consumer, skew check, v2 end to end). Each test starts with ``reset`` or
    ``load``; Feast is slow to import, so one rig serves them all."""

    repo: Path
    server: RedisServer
    client: redis.Redis

    @property
    def yaml(self) -> Path:
        return self.repo / RIG_YAML

    def store(self):  # type: ignore[no-untyped-def]
        from feast import FeatureStore

        return FeatureStore(repo_path=str(self.repo), fs_yaml_file=self.yaml)

    def reset(self) -> None:
        """Empty Redis (streams, window state, online rows) and the streaming offline tables."""
        self.client.flushall()
        write_stream_tables(WINDOWS, empty_stream_tables(WINDOWS), self.repo / "data")

    def load(self, stream: dict[str, pd.DataFrame], end: datetime) -> None:
        """Reset, write these streaming offline rows, and materialize every view up to ``end``."""
        self.reset()
        write_stream_tables(WINDOWS, stream, self.repo / "data")
        self.store().materialize(start_date=end - timedelta(days=31), end_date=end)


@pytest.fixture(scope="session")
def stream_rig(tmp_path_factory, feature_tables) -> Iterator[StreamRig]:
    """The feature repo with the batch tables, bound to its own redis-server and applied."""
    server = RedisServer(port=free_port(), workdir=tmp_path_factory.mktemp("redis_rig"))
    server.start()
    try:
        batch = {k: feature_tables[k] for k in ("ip", "card", "merchant")}
        repo = copy_repo(
            tmp_path_factory.mktemp("repo_rig") / "feature_repo",
            {**batch, **empty_stream_tables(WINDOWS)},
        )
        # A literal address, unlike ${REDIS_CONNECTION_STRING}: the shared redis_repo owns that.
        text = (repo / "feature_store.redis.yaml").read_text()
        (repo / RIG_YAML).write_text(
            text.replace("${REDIS_CONNECTION_STRING}", server.connection_string)
        )
        feast_cli(repo, "apply", yaml=RIG_YAML)
        with redis.Redis(port=server.port) as client:
            yield StreamRig(repo, server, client)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def v1_v2_training(tmp_path_factory, sqlite_repo, transactions_path) -> tuple[Path, str]:
    """One `python -m models train` run of fraud_model_v1 and fraud_model_v2: (root, output)."""
    from typer.testing import CliRunner

    from models.cli import app

    root = tmp_path_factory.mktemp("packages_v1_v2")
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--repo",
            str(sqlite_repo),
            "--events",
            str(transactions_path),
            "--output",
            str(root),
            "--feature-service",
            "fraud_model_v1",
            "--feature-service",
            "fraud_model_v2",
            # Early stopping ends well before; fewer rounds leave the streaming features unused.
            "--rounds",
            "300",
        ],
    )
    if result.exit_code != 0:
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"train failed:\n{result.output}\n{trace}")
    return root, result.output
