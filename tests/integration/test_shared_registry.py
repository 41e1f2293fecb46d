"""Two service replicas and the pipeline jobs share one Feast SQL registry on PostgreSQL.

Everything runs as its own process, as in production, and shares nothing but PostgreSQL and
Redis: `feast apply` (the plain CLI) in a folder with the definitions; the materialization job
(`python -m feature_pipelines materialize`) and two replicas (`python -m scoring_service serve`,
one on the fast Redis reader, one reading through Feast's SDK) in folders that hold nothing but
feature_store.sql.yaml. Then a second `apply` adds a feature view and a FeatureService:

- the job, run again without being told, finds the new view in the registry and materializes it;
- each replica refuses a package bound to the new FeatureService before the apply, and after it
  verifies and serves that package (the reload route re-reads the registry);
- both replicas keep answering while the apply and the job run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis

from models.package import seal_package
from tests.conftest import (
    ROOT,
    RedisServer,
    copy_repo,
    feast_cli,
    free_port,
    materialize_end,
)
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.service import ADMIN_HEADERS, API_HEADERS, Replica, as_request, launch_replica

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    # Session artefacts (data, a trained model) and real processes, on a busy two-core box.
    pytest.mark.timeout(1200),
]

SQL_YAML = "feature_store.sql.yaml"
NEW_VIEW = "merchant_risk"
NEW_SERVICE = "fraud_model_v1_shared"
NEW_VERSION = "v1s"

# What the second apply adds: a view the job has never materialized, and a FeatureService with
# v1's feature list under a new name (so v1's graph, rebound to it, is a valid package).
ADDITIONS = f'''"""Definitions added after the first apply."""

from datetime import timedelta

from data_sources import merchant_features_source
from entities import merchant
from feast import FeatureService, FeatureView, Field
from feast.types import Float64
from feature_views import card_features, ip_features, merchant_features

{NEW_VIEW} = FeatureView(
    name="{NEW_VIEW}",
    entities=[merchant],
    ttl=timedelta(days=7),
    schema=[Field(name="merchant_fraud_rate_30d", dtype=Float64)],
    online=True,
    source=merchant_features_source,
)

{NEW_SERVICE} = FeatureService(
    name="{NEW_SERVICE}", features=[ip_features, card_features, merchant_features]
)
'''


@dataclass
class SharedRegistry:
    """A feature registry in PostgreSQL, an online store in Redis, and the folders around them."""

    env: dict[str, str]
    definitions: Path  # the feature repository `feast apply` runs in
    job: Path  # the materialization job's folder: feature_store.sql.yaml only
    service: Path  # the replicas' folder: feature_store.sql.yaml and the domain's domain.yaml
    redis: RedisServer
    end: datetime

    def materialize(self, end: datetime) -> subprocess.CompletedProcess[str]:
        """The pipeline job, as a process of its own, incremental up to ``end``."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "feature_pipelines",
                "materialize",
                "--repo",
                str(self.job),
                "--yaml",
                str(self.job / SQL_YAML),
                "--end",
                end.strftime("%Y-%m-%dT%H:%M:%S"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=self.env_for_process(),
            timeout=600,
        )
        if result.returncode != 0:
            pytest.fail(f"materialize job failed:\n{result.stdout}\n{result.stderr}")
        return result

    def env_for_process(self) -> dict[str, str]:
        return {**os.environ, **self.env}


@pytest.fixture(scope="module")
def shared_registry(
    postgres_server: PostgresServer,
    feature_tables: dict[str, pd.DataFrame],
    data_end: datetime,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SharedRegistry]:
    """The definitions applied to a new PostgreSQL database and materialized by the job into a
    redis-server of this module's own."""
    database = postgres_server.create_database("feast_registry")
    server = RedisServer(port=free_port(), workdir=tmp_path_factory.mktemp("redis_shared"))
    server.start()
    try:
        env = {
            "FEAST_REGISTRY_URL": postgres_server.url(database),
            "REDIS_CONNECTION_STRING": server.connection_string,
            "FEAST_USAGE": "False",
        }
        root = tmp_path_factory.mktemp("shared_registry")
        definitions = copy_repo(root / "definitions", feature_tables)
        job, service = root / "job", root / "service"
        for folder in (job, service):
            folder.mkdir()
            shutil.copy(definitions / SQL_YAML, folder / SQL_YAML)
        # A replica is deployed with its domain's declaration; the definitions live in the registry.
        shutil.copy(definitions / "domain.yaml", service / "domain.yaml")
        feast_cli(definitions, "apply", yaml=SQL_YAML, env=env)
        shared = SharedRegistry(env, definitions, job, service, server, data_end)
        shared.materialize(datetime.fromisoformat(materialize_end(data_end)))
        yield shared
    finally:
        server.stop()


@pytest.fixture(scope="module")
def packages(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fraud_model/v1 as trained, and v1s: the same graph bound to the new FeatureService."""
    root = tmp_path_factory.mktemp("packages_shared")
    source = model_root / "fraud_model" / "v1"
    shutil.copytree(source, root / "fraud_model" / "v1")
    rebound = root / "fraud_model" / NEW_VERSION
    shutil.copytree(source, rebound)
    manifest = json.loads((rebound / "manifest.json").read_text())
    manifest.update(version=NEW_VERSION, feature_service=NEW_SERVICE)
    (rebound / "manifest.json").write_text(json.dumps(manifest, indent=2))
    seal_package(rebound)
    return root


@pytest.fixture(scope="module")
def replicas(
    shared_registry: SharedRegistry, packages: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Replica]]:
    """Two replicas on the SQL registry: the fast Redis reader, and Feast's SDK (which consults
    the registry, views' materialization state included, on every read)."""
    logs = tmp_path_factory.mktemp("replica_logs")
    yaml = shared_registry.service / SQL_YAML
    args = (shared_registry.service, yaml, packages, logs)
    started = [
        launch_replica(*args, env=shared_registry.env),
        launch_replica(*args, env=shared_registry.env, redis_reader="feast"),
    ]
    try:
        for replica in started:
            replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


def score_all(replica: Replica, bodies: list[dict]) -> list[dict]:
    """Answers of one replica to the bodies; each must be a 200 with a model score."""
    answers = []
    with httpx.Client(base_url=replica.url, headers=API_HEADERS, timeout=30.0) as client:
        for body in bodies:
            response = client.post("/v1/transactions/score", json=body)
            assert response.status_code == 200, (replica.address, response.text)
            answer = response.json()
            assert answer["score"] is not None, answer
            assert answer["reasons"] != ["feature_store_unavailable"], answer
            answers.append(answer)
    return answers


def reload(replica: Replica, version: str) -> httpx.Response:
    return httpx.post(
        f"{replica.url}/admin/models/reload",
        json={"name": "fraud_model", "version": version},
        headers=ADMIN_HEADERS,
        timeout=60.0,
    )


@dataclass
class Traffic:
    """One thread per replica scoring back to back; anything but a 200 is a failure."""

    replicas: list[Replica]
    bodies: list[dict]
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, replica: Replica) -> None:
        with httpx.Client(base_url=replica.url, headers=API_HEADERS, timeout=30.0) as client:
            i = 0
            while not self._stop.is_set():
                body = self.bodies[i % len(self.bodies)]
                i += 1
                try:
                    response = client.post("/v1/transactions/score", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{replica.address}: {exc!r}")
                    continue
                if response.status_code != 200 or response.json()["score"] is None:
                    self.failures.append(f"{replica.address}: {response.text[:300]}")
                self.answered += 1
                self._stop.wait(0.02)

    def __enter__(self) -> Traffic:
        for replica in self.replicas:
            thread = threading.Thread(target=self._run, args=(replica,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def services_seen_by_the_job(shared: SharedRegistry) -> str:
    """`feast feature-services list` in the job's folder (which holds no definitions)."""
    return feast_cli(shared.job, "feature-services", "list", yaml=SQL_YAML, env=shared.env).stdout


def has_view_rows(client: redis.Redis, view: str) -> bool:
    """Whether any entity hash holds the view's timestamp field (Feast's Redis layout)."""
    return any(client.hexists(key, f"_ts:{view}") for key in client.scan_iter(count=1000))


def test_an_apply_reaches_every_replica_and_the_job(
    shared_registry: SharedRegistry,
    replicas: list[Replica],
    recent: pd.DataFrame,
) -> None:
    bodies = [as_request(row) for _, row in recent.tail(8).iterrows()]
    before = [score_all(replica, bodies) for replica in replicas]
    # Both readers, one registry: the same features, so the same scores.
    assert [a["score"] for a in before[0]] == [a["score"] for a in before[1]]
    assert {a["model_version"] for a in before[0] + before[1]} == {"fraud_model/v1"}

    # Not applied yet: every replica refuses the package and keeps serving v1.
    for replica in replicas:
        refused = reload(replica, NEW_VERSION)
        assert refused.status_code == 409, refused.text
        assert NEW_SERVICE in refused.json()["message"], refused.text
    assert NEW_SERVICE not in services_seen_by_the_job(shared_registry)
    online = redis.Redis(port=shared_registry.redis.port)
    assert not has_view_rows(online, NEW_VIEW)

    with Traffic(replicas, bodies) as traffic:
        (shared_registry.definitions / "shared_additions.py").write_text(ADDITIONS)
        applied = feast_cli(
            shared_registry.definitions, "apply", yaml=SQL_YAML, env=shared_registry.env
        )
        # The job holds no definitions: it learns of the new view from the registry alone.
        job = shared_registry.materialize(
            datetime.fromisoformat(materialize_end(shared_registry.end)) + timedelta(minutes=1)
        )
    assert NEW_VIEW in applied.stdout, applied.stdout
    assert NEW_SERVICE in services_seen_by_the_job(shared_registry)
    assert NEW_VIEW in job.stdout, job.stdout
    assert has_view_rows(online, NEW_VIEW)
    online.close()

    for replica in replicas:
        swapped = reload(replica, NEW_VERSION)
        assert swapped.status_code == 200, (replica.address, swapped.text)
        assert swapped.json()["feature_service"] == NEW_SERVICE
    after = [score_all(replica, bodies) for replica in replicas]
    assert {a["model_version"] for a in after[0] + after[1]} == {f"fraud_model/{NEW_VERSION}"}
    for old, new in zip(before, after, strict=True):
        assert [a["score"] for a in old] == [a["score"] for a in new]

    assert traffic.answered > 0
    assert not traffic.failures, traffic.failures[:5]
    print(
        f"\nshared SQL registry: 2 replicas, {traffic.answered} answers during apply + "
        f"materialize, {len(traffic.failures)} failures; {NEW_SERVICE} served by both"
    )
