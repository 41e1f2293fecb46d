"""Per-score costs that size a deployment: service CPU and memory, Redis commands and CPU.

    .venv/bin/python infra/capacity/measure.py --out data/capacity.json

Builds the benchmark's world (``bench/dataset.py``: generated transactions, features in a
redis-server of its own, a trained model), starts the scoring service as ``python -m
scoring_service serve`` and drives it with wrk at a few concurrencies, once per online reader
(``fast``: the pipelined reader of one Redis server; ``feast``: Feast's SDK on that server;
``cluster``: Feast's SDK on a 3-primary Redis Cluster holding the same keys; the Kubernetes
manifests now read the cluster with the fast reader's cluster client, which this script does
not measure yet). Around each run it reads:

- the service's CPU seconds (``/proc/<pid>/stat`` utime + stime) and resident memory
  (``VmRSS``, ``VmHWM``);
- Redis ``INFO commandstats`` (calls per command, after ``CONFIG RESETSTAT``) and ``INFO cpu``
  (the server's CPU seconds), summed over the nodes of a cluster;
- Redis ``used_memory`` per stored entity key.

Costs per score are CPU seconds divided by answered scores: they hold on a busy machine, where
throughput and latency do not (wrk shares the cores with the service).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import redis
from redis.cluster import RedisCluster

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # bench/ is a folder of the repository, not an installed package

from bench.dataset import build_world  # noqa: E402
from bench.run import (  # noqa: E402
    API_KEY,
    BATCH_ROWS,
    SCORE_PATH,
    batch_call,
    free_port,
    redis_server,
    running,
    write_lines,
    wrk,
)

logger = logging.getLogger(__name__)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def run_scenario(
    pid: int,
    clients: list[redis.Redis],
    base: str,
    bodies: Path,
    connections: int,
    duration: float,
) -> dict:
    """One wrk run with CPU and Redis counters (summed over the nodes) read around it."""
    for client in clients:
        client.config_resetstat()
    cpu0, rcpu0 = process_cpu_s(pid), sum(redis_cpu_s(c) for c in clients)
    stats = wrk(base + SCORE_PATH, bodies, connections, duration, API_KEY)
    cpu1, rcpu1 = process_cpu_s(pid), sum(redis_cpu_s(c) for c in clients)
    per_node = [commandstats(c) for c in clients]
    scores = stats["requests"] - stats["errors"]
    calls: dict[str, int] = {}
    for node in per_node:
        for name, n in node.items():
            if name not in ("config|resetstat", "info"):
                calls[name] = calls.get(name, 0) + n
    per_score = {name: round(n / scores, 3) for name, n in sorted(calls.items())} if scores else {}
    result = {
        "connections": connections,
        "rps": stats["rps"],
        "p50_ms": stats["p50_ms"],
        "p99_ms": stats["p99_ms"],
        "scores": scores,
        "errors": stats["errors"],
        "service_cpu_ms_per_score": round(1000 * (cpu1 - cpu0) / scores, 4) if scores else None,
        "redis_cpu_us_per_score": round(1e6 * (rcpu1 - rcpu0) / scores, 2) if scores else None,
        "redis_calls_per_score": per_score,
        "memory_mib": process_memory_mib(pid),
    }
    if len(clients) > 1 and scores:
        result["hmget_per_score_per_node"] = [
            round(node.get("hmget", 0) / scores, 3) for node in per_node
        ]
    return result


def measure_reader(
    name: str,
    world,
    nodes: list[str],
    bodies: Path,
    logs: Path,
    args: argparse.Namespace,
    yaml: Path | None = None,
) -> dict:
    """Start the service with one online reader and run every concurrency against it.

    ``name`` is the SCORING_REDIS_READER value, or "cluster" (Feast's SDK, ``yaml`` naming a
    Redis Cluster store, ``nodes`` its primaries)."""
    from scoring_service.core.security import hash_key

    env = {
        "REDIS_CONNECTION_STRING": ",".join(nodes),
        "SCORING_FEATURE_REPO": str(world.repo),
        "SCORING_FEATURE_STORE_YAML": str(yaml or world.yaml),
        "SCORING_MODEL_ROOT": str(world.model_root),
        "SCORING_API_KEY_HASHES": hash_key(API_KEY),
        "SCORING_REDIS_READER": "feast" if name == "cluster" else name,
        # Long enough that a shared 2-core machine does not turn slow scores into 503s, and
        # that the 10,000-row batch call is measured, not cut short (as bench/run.py does).
        "SCORING_DEADLINE_MS": "1000",
        "SCORING_BATCH_DEADLINE_MS": "120000",
    }
    clients = [redis.Redis(host=n.split(":")[0], port=int(n.split(":")[1])) for n in nodes]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "scoring_service", "serve", "--port", str(port)]
    try:
        with running(f"service-{name}", cmd, env, logs) as service:
            ready_s = service.wait_ready(base + "/health/ready")
            idle = process_memory_mib(service.pid)
            wrk(base + SCORE_PATH, bodies, 16, 3.0, API_KEY)  # warm-up
            runs = [
                run_scenario(service.pid, clients, base, bodies, c, args.duration)
                for c in args.connections
            ]
            for run in runs:
                logger.info("%s reader: %s", name, run)
            # The largest call the service takes: its peak memory sizes the pod's limit.
            cpu0 = process_cpu_s(service.pid)
            seconds = batch_call(base, world.bodies[:BATCH_ROWS], repeats=2)
            cpu1 = process_cpu_s(service.pid)
            batch = {
                "rows": BATCH_ROWS,
                "seconds": [round(s, 3) for s in seconds],
                # batch_call makes one warm-up call before the timed ones
                "service_cpu_ms_per_score": round(
                    1000 * (cpu1 - cpu0) / (BATCH_ROWS * (len(seconds) + 1)), 4
                ),
                "memory_mib": process_memory_mib(service.pid),
            }
            return {
                "ready_s": round(ready_s, 2),
                "idle_memory_mib": idle,
                "runs": runs,
                "score_batch": batch,
            }
    finally:
        for client in clients:
            client.close()


@contextlib.contextmanager
def redis_cluster(workdir: Path, logs: Path, primaries: int = 3) -> Iterator[list[str]]:
    """A Redis Cluster of ``primaries`` nodes (no replicas) on loopback; yields host:port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; run `make setup`")
    ports: list[int] = []
    while len(ports) < primaries:
        port = free_port()
        if port >= 55_000 or port in ports:
            continue
        with socket.socket() as sock:  # the cluster bus listens on port + 10000
            try:
                sock.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        ports.append(port)
    with contextlib.ExitStack() as stack:
        for port in ports:
            cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            cmd += ["--appendonly", "no", "--dir", str(workdir), "--cluster-enabled", "yes"]
            cmd += ["--cluster-config-file", f"nodes-{port}.conf"]
            stack.enter_context(running(f"redis-{port}", cmd, {}, logs))
        nodes = [f"127.0.0.1:{port}" for port in ports]
        for port in ports:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            client.close()
        create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0"]
        create.append("--cluster-yes")  # no interactive confirmation
        subprocess.run(
            create,
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in ports:
            client = redis.Redis(port=port)
            while client.cluster("info").get("cluster_state") != "ok":
                time.sleep(0.1)
            client.close()
        yield nodes


def copy_into_cluster(source: str, nodes: list[str]) -> int:
    """Every key of one Redis server into the cluster, byte for byte (DUMP/RESTORE)."""
    host, _, port = source.partition(":")
    src = redis.Redis(host=host, port=int(port))
    head_host, _, head_port = nodes[0].partition(":")
    dst = RedisCluster(host=head_host, port=int(head_port))
    copied = 0
    try:
        keys: list[bytes] = []
        for key in src.scan_iter(count=2000):
            keys.append(key)
            if len(keys) == 2000:
                copied += _copy_keys(src, dst, keys)
                keys = []
        copied += _copy_keys(src, dst, keys)
    finally:
        src.close()
        dst.close()
    return copied


def _copy_keys(src: redis.Redis, dst: RedisCluster, keys: list[bytes]) -> int:
    if not keys:
        return 0
    with src.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.dump(key)
        dumps = pipe.execute()
    with dst.pipeline() as pipe:
        for key, dump in zip(keys, dumps, strict=True):
            pipe.restore(key, 0, dump, replace=True)
        pipe.execute()
    return len(keys)


def main() -> None:
    """Build the world, measure both readers, print (and optionally write) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "data" / "capacity")
    parser.add_argument("--rows", type=int, default=20_000, help="generated transactions")
    parser.add_argument("--entities", type=int, default=20_000, help="keys per feature view")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--readers", nargs="+", default=["fast", "feast", "cluster"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results: dict = {
        "command": "python infra/capacity/measure.py " + " ".join(sys.argv[1:]),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp_text:
        tmp = Path(tmp_text)
        logs = args.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with redis_server(tmp) as redis_url:
            host, _, port_text = redis_url.partition(":")
            client = redis.Redis(host=host, port=int(port_text))
            empty = int(client.info("memory")["used_memory"])
            world = build_world(args.workdir, redis_url, rows=args.rows, entities=args.entities)
            keys = int(client.dbsize())
            used = int(client.info("memory")["used_memory"])
            client.close()
            results["redis_memory"] = {
                "entity_keys": keys,
                "views_per_key": 1,
                "used_memory_bytes": used,
                "bytes_per_entity_key": round((used - empty) / keys, 1),
            }
            bodies = write_lines(tmp / "bodies.jsonl", world.bodies)
            results["readers"] = {
                reader: measure_reader(reader, world, [redis_url], bodies, logs, args)
                for reader in args.readers
                if reader != "cluster"
            }
            if "cluster" in args.readers:
                with redis_cluster(tmp, logs) as nodes:
                    copied = copy_into_cluster(redis_url, nodes)
                    logger.info("copied %d keys into a %d-node cluster", copied, len(nodes))
                    # The world's feature_store yaml with a Redis Cluster online store.
                    text = world.yaml.read_text()
                    cluster_yaml = world.yaml.with_name("feature_store.cluster.yaml")
                    cluster_yaml.write_text(
                        text.replace("redis_type: redis\n", "redis_type: redis_cluster\n")
                    )
                    results["readers"]["cluster"] = measure_reader(
                        "cluster", world, nodes, bodies, logs, args, yaml=cluster_yaml
                    )
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
