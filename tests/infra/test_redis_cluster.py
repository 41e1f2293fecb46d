"""The Redis Cluster manifests against real redis-server processes: six nodes started with the
StatefulSet's arguments and the ConfigMap's redis.conf, formed into a cluster by the init Job's
own script, then read and written through redis-py's cluster client with the password."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tests.fixtures import processes
from tests.infra.manifests import (
    Document,
    config_maps,
    containers,
    deployed_documents,
    expand,
    pod_template,
)

pytestmark = pytest.mark.redis

PASSWORD = "0f3c9a1be27d4c5a8e6b"
NODES = 6


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < 55_000 and bindable(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def the(kind: str, name: str) -> Document:
    return next(d for d in deployed_documents() if d.kind == kind and d.name == name)


def only_container(doc: Document) -> dict:
    template = pod_template(doc)
    assert template is not None
    (container,) = containers(template)
    return container


def wait_for_ping(port: int, deadline_s: float = 10.0) -> None:
    client = redis.Redis(port=port, password=PASSWORD, socket_connect_timeout=0.2)
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture()
def nodes(tmp_path: Path) -> Iterator[list[int]]:
    """Six redis-server processes as the StatefulSet starts them, on loopback ports."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; run `make setup`")
    statefulset = the("StatefulSet", "fraud-redis")
    container = only_container(statefulset)
    text = config_maps(deployed_documents())["fraud-redis-config"]["redis.conf"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    started: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(NODES):
            # The pod's volumes are folders here: its data volume and its config volume.
            data = tmp_path / f"node{i}" / "data"
            config = tmp_path / f"node{i}" / "config"
            data.mkdir(parents=True)
            config.mkdir()
            (config / "redis.conf").write_text(text.replace(mounts["data"], str(data)))
            env = {
                "POD_NAME": f"fraud-redis-{i}",
                "POD_NAMESPACE": "test",
                "REDIS_PASSWORD": PASSWORD,
            }
            args = [expand(arg, env) for arg in container["args"]]
            assert f"fraud-redis-{i}.fraud-redis.test.svc.cluster.local" in args
            args = [arg.replace(mounts["config"], str(config)) for arg in args]
            port = cluster_port()
            # The manifest's arguments, then what differs on a test machine: loopback, a free
            # port, no snapshots, and an announced name that resolves here.
            overrides = ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            overrides += ["--cluster-announce-hostname", "localhost"]
            command = [binary, *args, *overrides]
            started.append(
                processes.start(
                    command,
                    stop_signal=signal.SIGKILL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            ports.append(port)
        for port in ports:
            wait_for_ping(port)
        yield ports
    finally:
        for process in started:
            processes.stop(process)


def run_init_job(ports: list[int]) -> subprocess.CompletedProcess[str]:
    """The init Job's container command, with the nodes' loopback addresses as NODES."""
    job = only_container(the("Job", "fraud-redis-cluster-init"))
    env = {
        "PATH": os.environ["PATH"],
        "REDISCLI_AUTH": PASSWORD,
        "NODES": " ".join(f"127.0.0.1:{port}" for port in ports),
    }
    return subprocess.run(
        [*job["command"], *job["args"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_init_job_forms_the_cluster_once(nodes: list[int]) -> None:
    first = run_init_job(nodes)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[OK] All 16384 slots covered." in first.stdout
    # Three primaries and three replicas, each as the node itself says.
    roles = []
    for port in nodes:
        client = redis.Redis(port=port, password=PASSWORD)
        try:
            roles.append(client.execute_command("ROLE")[0])
        finally:
            client.close()
    assert sorted(r.decode() if isinstance(r, bytes) else r for r in roles) == (
        ["master"] * 3 + ["slave"] * 3
    )
    # A second run (a re-applied Job) leaves the cluster as it is.
    again = run_init_job(nodes)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "cluster already formed (6 nodes known)" in again.stdout


def test_cluster_clients_follow_redirects_by_name(nodes: list[int]) -> None:
    assert run_init_job(nodes).returncode == 0
    from feast.infra.online_stores.redis import RedisOnlineStore

    # The connection string the manifests build: startup nodes, then the password.
    connection = ",".join(f"127.0.0.1:{p}" for p in nodes) + f",password={PASSWORD}"
    startup, params = RedisOnlineStore._parse_connection_string(connection)
    assert len(startup) == NODES
    assert params == {"password": PASSWORD}
    client = RedisCluster(host="127.0.0.1", port=nodes[0], password=PASSWORD)
    try:
        keys = [f"entity:{i}" for i in range(200)]  # spread over every primary's slots
        for key in keys:
            client.hset(key, mapping={"f": key})
        assert [client.hget(key, "f") for key in keys] == [key.encode() for key in keys]
        # Redirects name nodes by the announced hostname (cluster-preferred-endpoint-type).
        slots = client.execute_command("CLUSTER SHARDS", target_nodes=RedisCluster.RANDOM)
        assert "localhost" in str(slots)
    finally:
        client.close()
