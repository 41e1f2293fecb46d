"""``make soak``: the service under a steady load for a long time, counting errors and RSS growth.

1. Start the service (``python -m scoring_service serve``, settings from the SCORING_* variables
   as ``make serve`` would use them, so ``STORE=redis`` soaks the Redis path) on a free port,
   with a fresh API key of its own.
2. Measure its maximum rate: the most scored answers per second over ``wrk`` closed-loop runs
   (``bench/wrk/post.lua``) at 2, 4, 8 and 16 connections.
3. Hold half that rate for ``--duration`` seconds with an open-loop generator: requests are
   scheduled at fixed times whatever the answers do, and latency counts from the scheduled
   time, so a stall shows up as latency instead of silently lowering the rate.
4. Report errors (any answer but a scored 200: other statuses, outage-policy answers, transport
   errors, timeouts; target 0), p99 latency (target: under half the deadline,
   ``SCORING_DEADLINE_MS``), the service's RSS growth from after warm-up to the end (target
   < 5 %) and the machine's load average every five seconds (other work competes with the
   service for the CPU), and write them to ``--out`` (bench/results/soak.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from feature_pipelines.fraud.schema import api_body

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEADLINE_MS = 50.0  # the service's SCORING_DEADLINE_MS default
sys.path.insert(0, str(ROOT))

from scoring_service.core.security import hash_key, new_key  # noqa: E402

LUA = ROOT / "bench" / "wrk" / "post.lua"
PATH = "/v1/transactions/score"
WARMUP_S = 60.0
"""RSS growth is measured from this far into the soak (allocator pools and caches filled)."""
RSS_EVERY_S = 5.0
CONNECTIONS = 64
TIMEOUT_S = 5.0


def log(message: str) -> None:
    """Progress on stderr (this is a script, not library code)."""
    print(f"[soak {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def bodies_from(transactions: Path, n: int = 2000) -> list[bytes]:
    """Recent generated transactions as request bodies (their entities are in the store)."""
    frame = pd.read_parquet(transactions).sort_values("event_timestamp").tail(n)
    out = []
    for row in frame.itertuples():
        body = api_body(row)
        out.append(json.dumps(body, separators=(",", ":")).encode())
    return out


def start_service(port: int, key: str, logfile: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "SCORING_HOST": "127.0.0.1",
        "SCORING_PORT": str(port),
        "SCORING_API_KEY_HASHES": hash_key(key),
        "SCORING_LOG_LEVEL": os.environ.get("SCORING_LOG_LEVEL", "warning"),
    }
    with logfile.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "scoring_service", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"service did not get ready; see {logfile}")
        time.sleep(0.2)


def wrk_run(url: str, key: str, bodies_file: Path, connections: int, seconds: int) -> dict:
    """One closed-loop wrk run; `rps` counts scored answers only (not deadline 503s)."""
    env = {
        **os.environ,
        "BENCH_BODIES": str(bodies_file),
        "BENCH_PATH": PATH,
        "BENCH_API_KEY": key,
    }
    threads = min(2, connections)
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(LUA), url],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    match = re.search(r"BENCH_JSON (\{.*\})", result.stdout)
    if match is None:
        raise SystemExit(f"wrk printed no BENCH_JSON line:\n{result.stdout}\n{result.stderr}")
    stats = json.loads(match.group(1))
    failed = sum(v for k, v in stats.items() if k.startswith("errors_"))
    good = max(stats["requests"] - failed, 0)
    return {"connections": connections, "rps": good / (stats["duration_us"] / 1e6), **stats}


def max_rate(url: str, key: str, bodies_file: Path, seconds: int) -> dict[str, Any]:
    """The most scored answers per second over closed-loop runs at 2 to 16 connections.

    Past some concurrency, queueing pushes answers past their deadline (503s), so the best
    rate of *scored* answers is found below the highest concurrency.
    """
    runs = [wrk_run(url, key, bodies_file, c, seconds) for c in (2, 4, 8, 16)]
    best = max(runs, key=lambda run: run["rps"])
    return {"rps": best["rps"], "best": best, "runs": runs}


class Load:
    """Open-loop load at a fixed rate over keep-alive connections."""

    def __init__(self, port: int, key: str, bodies: list[bytes], rate: float) -> None:
        self.port = port
        self.rate = rate
        self.requests = [
            (
                f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n"
            ).encode()
            + b
            for b in bodies
        ]
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.ok = 0

    async def _worker(self, queue: asyncio.Queue[float | None]) -> None:
        reader = writer = None
        while True:
            scheduled = await queue.get()
            if scheduled is None:
                break
            request = self.requests[self.sent % len(self.requests)]
            self.sent += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                assert reader is not None
                writer.write(request)
                status, body = await asyncio.wait_for(_read_response(reader), TIMEOUT_S)
            except Exception as exc:  # every failure is counted, none stops the soak
                self.errors[f"transport:{type(exc).__name__}"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            self.latencies.append(time.perf_counter() - scheduled)
            if status != 200:
                code = re.search(rb'"code":\s*"(\w+)"', body)
                self.errors[f"{status}:{code.group(1).decode() if code else '?'}"] += 1
            elif b'"feature_store_unavailable"' in body:
                self.errors["200:outage_policy_answer"] += 1
            else:
                self.ok += 1
        if writer is not None:
            writer.close()

    async def run(self, seconds: float, on_tick: Any) -> float:
        """Send at `rate` for `seconds`; returns the achieved duration."""
        queue: asyncio.Queue[float | None] = asyncio.Queue()
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(CONNECTIONS)]
        start = time.perf_counter()
        interval = 1.0 / self.rate
        n = 0
        next_tick = start
        while (now := time.perf_counter()) - start < seconds:
            # Everything due by now goes out; being late never lowers the rate.
            while start + n * interval <= now:
                queue.put_nowait(start + n * interval)
                n += 1
            if now >= next_tick:
                on_tick(now - start)
                next_tick = now + RSS_EVERY_S
            await asyncio.sleep(max(0.0, start + n * interval - time.perf_counter()))
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
        return time.perf_counter() - start


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, await reader.readexactly(length)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="Soak seconds.")
    parser.add_argument(
        "--max-rate-seconds", type=int, default=8, help="Length of each wrk run (4 of them)."
    )
    parser.add_argument("--fraction", type=float, default=0.5, help="Share of the max rate.")
    parser.add_argument("--transactions", type=Path, default=ROOT / "data/transactions.parquet")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/soak.json")
    args = parser.parse_args()
    # A plain `kill` must still stop the service this script started (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    key = new_key()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    bodies = bodies_from(args.transactions)
    bodies_file = work / "bodies.jsonl"
    bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
    log(f"starting the service on {url} (log {work / 'service.log'})")
    started = time.monotonic()
    service = start_service(port, key, work / "service.log")
    ready_s = time.monotonic() - started
    try:
        log(f"measuring the maximum rate with wrk ({args.max_rate_seconds} s per run)")
        peak = max_rate(url + PATH, key, bodies_file, args.max_rate_seconds)
        rate = peak["rps"] * args.fraction
        log(f"maximum {peak['rps']:.0f} scored/s; soaking at {rate:.0f}/s for {args.duration} s")
        load = Load(port, key, bodies, rate)
        samples: list[tuple[float, int]] = []
        loads: list[tuple[float, float]] = []

        def tick(elapsed: float) -> None:
            samples.append((round(elapsed, 1), rss_bytes(service.pid)))
            loads.append((round(elapsed, 1), round(os.getloadavg()[0], 2)))
            if len(samples) % 12 == 1:
                log(
                    f"{elapsed:5.0f} s  sent {load.sent}  ok {load.ok}  "
                    f"errors {sum(load.errors.values())}  rss {samples[-1][1] / 2**20:.1f} MiB"
                )

        elapsed = asyncio.run(load.run(args.duration, tick))
        samples.append((round(elapsed, 1), rss_bytes(service.pid)))
    finally:
        service.terminate()
        service.wait(timeout=30)

    after_warmup = [rss for t, rss in samples if t >= min(WARMUP_S, args.duration / 2)]
    baseline, end = after_warmup[0], samples[-1][1]
    errors = sum(load.errors.values())
    deadline_ms = float(os.environ.get("SCORING_DEADLINE_MS", DEFAULT_DEADLINE_MS))
    p99_ms = percentile(load.latencies, 0.99) * 1000
    load_1m = [value for _, value in loads] or [os.getloadavg()[0]]
    result = {
        "command": "make soak"
        + (f" SOAK_SECONDS={args.duration:g}" if args.duration != 600 else ""),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            # Other work on the machine shows here; the service competes with it for the CPU.
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "load_average_1m_during": {
                "min": min(load_1m),
                "mean": round(sum(load_1m) / len(load_1m), 2),
                "max": max(load_1m),
            },
        },
        "store": os.environ.get("SCORING_FEATURE_STORE_YAML") or "feature_repo (SQLite)",
        "service_ready_s": round(ready_s, 1),
        "max_rate_rps": round(peak["rps"], 1),
        "max_rate_wrk": peak,
        "target_rate_rps": round(rate, 1),
        "duration_s": round(elapsed, 1),
        "achieved_rate_rps": round(load.sent / elapsed, 1),
        "requests": load.sent,
        "ok": load.ok,
        "errors": errors,
        "errors_by_kind": dict(load.errors),
        "error_rate": errors / max(load.sent, 1),
        "latency_ms": {
            name: round(percentile(load.latencies, q) * 1000, 2)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))
        }
        | {"max": round(max(load.latencies, default=float("nan")) * 1000, 2)},
        "rss_mib": {
            "start": round(samples[0][1] / 2**20, 1),
            "after_warmup": round(baseline / 2**20, 1),
            "end": round(end / 2**20, 1),
            "max": round(max(rss for _, rss in samples) / 2**20, 1),
        },
        "rss_growth_pct": round((end - baseline) / baseline * 100, 2),
        "deadline_ms": deadline_ms,
        "targets": {"errors": 0, "p99_ms_below": deadline_ms / 2, "rss_growth_pct_below": 5.0},
        "passed": errors == 0 and p99_ms < deadline_ms / 2 and (end - baseline) / baseline < 0.05,
        "rss_samples": samples,
        "load_average_1m_samples": loads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(
        f"done: {load.sent} requests at {result['achieved_rate_rps']}/s, {errors} errors, "
        f"p99 {result['latency_ms']['p99']} ms, RSS {result['rss_mib']['after_warmup']} -> "
        f"{result['rss_mib']['end']} MiB ({result['rss_growth_pct']:+.2f} %); wrote {args.out}"
    )
    if not result["passed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
