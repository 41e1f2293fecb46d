"""``make bench``: the scoring path measured side by side with its anchors, in one run.

On this machine, against one Redis server started here on a free port and filled with a
realistic feature set (``bench/dataset.py``):

(a) the service's ``POST /v1/transactions/score`` at 1 and 16 connections, and at 256
    connections asking for the production deadline (``X-Deadline-Ms: 50``): overload, where
    every answer must be a score or a fast 503 ``overloaded``;
(a2) the same with 2 worker processes (``SCORING_WORKERS=2``), and with 1 worker under granian
    (the alternative ASGI server) instead of uvicorn;
(a3) c=16 with a deployment file (``SCORING_DEPLOYMENT``) of the champion alone, then of the
    champion plus one shadow scoring every request: what a shadow costs the answers;
(b) ``feast serve``'s ``/get-online-features`` for the same entities and features (feature
    lookup only), the real Feast CLI against the same repository and Redis;
(c) a trivial FastAPI endpoint with the same request model and no work (the framework ceiling),
    and a bare ASGI app answering a fixed JSON body (the HTTP stack's ceiling), both served
    with the service's uvicorn settings (``bench/trivial_app.py``);
(d) ``score-batch`` with 10,000 transactions versus reading the same rows with Feast's SDK,
    one ``get_online_features`` call per row and one call for all rows;
(e) admission under overload: the service's capacity (wrk, c=16), then open-loop arrivals
    (``bench/openloop.py``) at 0.5x, 1x, 2x and 5x of it asking for the production deadline,
    the closed-loop c=256 row, and one key flooding at ten times its quota beside another key
    (``--only admission`` runs these rows alone: ``make bench-admission``);
(f) a model family of 200 members under a memory budget holding 50, a Zipf segment mix, versus
    the single-model deployment (``bench/family.py``; ``--only family`` runs it alone);
(g) stream scoring: one ``stream-score`` process's events/s at saturation and its
    event-to-decision p50/p99 at half that rate, against (a)'s c=16 (``bench/stream.py``;
    ``--only stream`` runs it with one c=16 run of the service).

HTTP load comes from ``wrk`` (closed loop, ``bench/wrk/post.lua``). The run prints one table and
writes it as JSON to ``bench/results/latest.json`` and ``bench/results/<UTC time>.json``, with
the machine's core count, its load average before and after the run, library versions, the
service's RSS per worker after warm-up and its time from process start to ready. A py-spy
profile of the service under load goes to ``bench/results/profile_service_c16.txt`` (skipped
when py-spy cannot attach).

Why one module of this length: every anchor and every service configuration must be measured in
one run, in a fixed order, against the same Redis and the same request bodies, so that the ratios
compare like with like; each phase is a function of its own, and the data set it fills Redis
with is ``bench/dataset.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from bench.dataset import BenchWorld, build_world
from bench.family import TARGETS as FAMILY_TARGETS
from bench.stream import TARGETS as STREAM_TARGETS

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LUA = ROOT / "bench" / "wrk" / "post.lua"
SCORE_PATH = "/v1/transactions/score"
BATCH_PATH = "/v1/transactions/score-batch"
FEAST_PATH = "/get-online-features"
API_KEY = "bench-scoring-key"
BATCH_ROWS = 10_000

OVERLOAD_CONNECTIONS = 256
OVERLOAD_DEADLINE_MS = 50  # the production deadline (SCORING_DEADLINE_MS's default)

TARGETS = {
    "throughput_vs_feast_serve": (">=", 10.0),
    "throughput_vs_trivial": (">=", 0.8),
    "throughput_vs_bare_asgi": (">=", 0.35),
    "c1_p50_vs_trivial": ("<=", 1.5),
    "c16_p99_vs_trivial_p99": ("<=", 2.0),
    "c16_p99_vs_own_p50": ("<=", 3.0),
    "overload_p99_ms": ("<=", 2.0 * OVERLOAD_DEADLINE_MS),
    "overload_other_answers": ("<=", 0.0),
    "batch_speedup_vs_sdk": (">=", 30.0),
    "batch_speedup_vs_sdk_one_call": (">=", 10.0),
    "rss_mb": ("<=", 300.0),
    "rss_mb_per_worker_2_workers": ("<=", 300.0),
    "ready_s": ("<=", 10.0),
    "throughput_with_shadow_vs_without": (">=", 0.7),
    # (e) admission under overload (issue targets; ratios of the same run)
    "open_loop_2x_goodput_vs_capacity": (">=", 0.9),
    "open_loop_5x_goodput_vs_capacity": (">=", 0.9),
    "open_loop_2x_p99_ok_ms": ("<=", float(OVERLOAD_DEADLINE_MS)),
    "open_loop_5x_p99_ok_ms": ("<=", float(OVERLOAD_DEADLINE_MS)),
    "open_loop_2x_p99_refused_ms": ("<=", 5.0),
    "open_loop_5x_p99_refused_ms": ("<=", 5.0),
    "closed_c256_goodput_vs_c16": (">=", 0.8),
    "closed_c256_p99_ms": ("<=", 2.0 * OVERLOAD_DEADLINE_MS),
    "closed_c256_other_answers": ("<=", 0.0),
    "noisy_key_calm_refusals": ("<=", 0.0),
    "noisy_key_calm_p99_ms": ("<=", float(OVERLOAD_DEADLINE_MS)),
    **FAMILY_TARGETS,
    **STREAM_TARGETS,
}

# (a3): the one-model deployment, and the same with a shadow that scores every request (the same
# package, so the shadow's cost is a second model call per micro-batch and its bookkeeping).
_CHAMPION = {"name": "champion", "package": "fraud_model/v1", "weight": 1.0}
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "champion": {"name": "bench champion", "sticky_field": "card_id", "champion": _CHAMPION},
    "champion + shadow": {
        "name": "bench champion with a shadow",
        "sticky_field": "card_id",
        "champion": _CHAMPION,
        "shadows": [{"name": "shadow", "package": "fraud_model/v1"}],
    },
}


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process with its log in a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path, cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.started = time.perf_counter()
        self.handle = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=self.handle, stderr=subprocess.STDOUT, cwd=cwd
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far (user and system, all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """Resident memory of the process (VmRSS), in MiB."""
        return rss_mb(self.pid)

    def worker_rss_mb(self) -> list[float]:
        """RSS of each child process (the workers of a multi-process server), in MiB."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid:
                children.append(int(stat.parent.name))
        return [rss_mb(pid) for pid in sorted(children)]

    def wait_log(self, text: str, count: int, timeout: float = 180.0) -> None:
        """Wait until ``text`` appears ``count`` times in the log (e.g. once per worker)."""
        deadline = time.perf_counter() + timeout
        while self.log.read_text(errors="replace").count(text) < count:
            if self.popen.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name}: {count} x {text!r} not logged; see {self.log}")
            time.sleep(0.1)

    def wait_ready(self, url: str, timeout: float = 120.0) -> float:
        """Seconds from process start until ``url`` answers 200."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self.handle.close()


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def running(
    name: str, cmd: list[str], env: dict[str, str], log_dir: Path, cwd: Path = ROOT
) -> Iterator[Process]:
    """Start a process for the duration of a block."""
    process = Process(name, cmd, env, log_dir, cwd)
    try:
        yield process
    finally:
        process.stop()


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server on a free loopback port; yields host:port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; run `make setup`")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir)]
    with running("redis", cmd, {}, workdir):
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"


def wrk(
    url: str,
    bodies: Path,
    connections: int,
    duration: float,
    api_key: str | None = None,
    deadline_ms: int | None = None,
    statuses: bool = False,
) -> dict[str, Any]:
    """One wrk run; its throughput, latency percentiles (ms) and errors, and with ``statuses``
    the count of answers per status (503s per error code)."""
    threads = min(connections, 2)
    path = "/" + url.split("/", 3)[3]
    env = {"BENCH_BODIES": str(bodies), "BENCH_PATH": path, "BENCH_API_KEY": api_key or ""}
    env["BENCH_DEADLINE_MS"] = str(deadline_ms or "")
    env["BENCH_STATUS"] = "1" if statuses else "0"
    seconds = max(1, round(duration))  # wrk takes whole seconds
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"]
    cmd += ["--timeout", "5s", "-s", str(LUA), url]
    result = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=duration + 60
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed:\n{result.stdout}\n{result.stderr}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(v for k, v in raw.items() if k.startswith("errors_"))
    # Throughput counts answered calls only: a non-2xx answer (e.g. 503 at a deadline) is not a
    # score. Latency percentiles are over every response, as wrk measures them.
    out: dict[str, Any] = {
        "rps": round((raw["requests"] - raw["errors_status"]) / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 3),
        "p90_ms": round(raw["p90_us"] / 1000, 3),
        "p99_ms": round(raw["p99_us"] / 1000, 3),
        "p999_ms": round(raw["p999_us"] / 1000, 3),
        "max_ms": round(raw["max_us"] / 1000, 3),
        "requests": raw["requests"],
        "errors": errors,
    }
    if statuses:
        counted: Counter[str] = Counter()
        for key, n in raw.get("statuses", []):
            counted[key] += n
        out["statuses"] = dict(sorted(counted.items()))
    return out


def overload_scenario(name: str, base: str, bodies: Path, duration: float, key: str | None) -> dict:
    """wrk at OVERLOAD_CONNECTIONS asking for the production deadline, answers counted."""
    stats = wrk(
        base + SCORE_PATH,
        bodies,
        OVERLOAD_CONNECTIONS,
        duration,
        key,
        deadline_ms=OVERLOAD_DEADLINE_MS,
        statuses=True,
    )
    logger.info("%s c=%d: %s", name, OVERLOAD_CONNECTIONS, stats)
    return {"name": name, "concurrency": OVERLOAD_CONNECTIONS, **stats}


# --- (e) admission under overload: open-loop rows, the closed-loop c=256 row, a noisy key ----

OPEN_LOOP_FACTORS = (0.5, 1.0, 2.0, 5.0)
NOISY_KEY = "bench-noisy-key"
NOISY_RATE = 50.0  # the noisy key's quota, calls a second; it sends ten times that
CALM_RATE = 50.0  # the calm key's calls a second beside it


def open_loop(base: str, streams: list[dict], seconds: float) -> dict[str, dict]:
    """``bench/openloop.py`` in its own process; each stream's summary by name."""
    cmd = [sys.executable, "-m", "bench.openloop", "--url", base, "--seconds", f"{seconds:g}"]
    for stream in streams:
        cmd += ["--stream", json.dumps(stream)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"open-loop generator failed:\n{done.stderr[-2000:]}")
    return {s["stream"]: s for s in json.loads(done.stdout)["streams"]}


def refusal_counts(base: str) -> dict[str, float]:
    """Where the service's refusals came from so far (its metrics): at admission (the class
    limit, or a key's quota), as 503 overloaded in all (admission plus deadlines missed on a
    saturated loop), and the learned limit now."""
    counts = {"refused_at_admission": 0.0, "overloaded_all": 0.0, "limit": 0.0}
    for line in httpx.get(base + "/metrics", timeout=30.0).text.splitlines():
        if line.startswith("scoring_admission_refused_total{"):
            counts["refused_at_admission"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("scoring_errors_total{") and 'code="overloaded"' in line:
            counts["overloaded_all"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("scoring_admission_limit "):
            counts["limit"] = float(line.rsplit(" ", 1)[1])
    return counts


def open_loop_row(name: str, got: dict) -> dict:
    """An open-loop stream's summary as a scenario row (concurrency 0: open loop; rps is the
    goodput, p50/p99 of the scored answers)."""
    nan = float("nan")
    return {
        "name": name,
        "concurrency": 0,
        "rps": got["goodput"],
        "p50_ms": nan if got["p50_ok_ms"] is None else got["p50_ok_ms"],
        "p99_ms": nan if got["p99_ok_ms"] is None else got["p99_ok_ms"],
        "p99_refused_ms": got["p99_refused_ms"],
        "offered_rps": got["rate"],
        "sent": got["sent"],
        "answers": got["answers"],
        "codes": got["codes"],
        "errors": sum(got["errors"].values()),
        "transport_errors": got["errors"],
        "send_lag_p99_ms": got["send_lag_p99_ms"],
        # Sent again on a new connection: the kept-alive one had been closed while idle.
        "resent": got.get("resent", 0),
    }


def service_command(server: str, port: int) -> list[str]:
    """The service on ``port``, 1 worker: ``serve`` (uvicorn) or the same app under granian."""
    if server == "granian":
        granian = shutil.which("granian") or str(Path(sys.executable).parent / "granian")
        cmd = [granian, "--interface", "asgi", "--loop", "uvloop", "--workers", "1"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        return [*cmd, "--factory", "scoring_service.api.app:create_app_from_env"]
    return [sys.executable, "-m", "scoring_service", "serve", "--port", str(port)]


def admission_scenarios(
    env: dict[str, str], bodies: Path, logs: Path, duration: float, server: str = "uvicorn"
) -> tuple[list[dict], dict[str, float]]:
    """(e): the service's capacity (wrk, c=16), open-loop arrivals at 0.5x to 5x of it asking
    for the production deadline, the closed-loop c=256 row, and one key flooding at ten times
    its quota beside another key. Rows, and the ratios the targets read. ``server``: uvicorn
    (``serve``, the default) or granian (``--server granian``: the same rows, the same app)."""
    from scoring_service.core.security import hash_key

    label = "service POST /v1/transactions/score" + (", granian" if server == "granian" else "")
    headers = {"X-API-Key": API_KEY, "X-Deadline-Ms": str(OVERLOAD_DEADLINE_MS)}
    rows: list[dict] = []
    ratios: dict[str, float] = {}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = service_command(server, port)
    with running("service_admission", cmd, env, logs) as service:
        service.wait_ready(base + "/health/ready")
        (capacity_row,) = http_scenarios(
            f"{label} (capacity)", base, SCORE_PATH, bodies, duration, API_KEY, connections=(16,)
        )
        rows.append(capacity_row)
        capacity = capacity_row["rps"]
        for factor in OPEN_LOOP_FACTORS:
            rate = round(capacity * factor, 1)
            stream = {"name": "score", "path": SCORE_PATH, "rate": rate, "bodies": str(bodies)}
            before = refusal_counts(base)
            got = open_loop(base, [{**stream, "headers": headers}], duration)["score"]
            after = refusal_counts(base)
            name = f"{label}, open loop {factor:g}x capacity, X-Deadline-Ms {OVERLOAD_DEADLINE_MS}"
            row = open_loop_row(name, got)
            row["refused_at_admission"] = (
                after["refused_at_admission"] - before["refused_at_admission"]
            )
            row["overloaded_all"] = after["overloaded_all"] - before["overloaded_all"]
            row["limit_after"] = after["limit"]
            rows.append(row)
            logger.info("open loop %gx: %s", factor, row)
            key = f"open_loop_{factor:g}x".replace(".", "_")
            ratios[f"{key}_goodput_vs_capacity"] = got["goodput"] / capacity
            if got["p99_ok_ms"] is not None:
                ratios[f"{key}_p99_ok_ms"] = got["p99_ok_ms"]
            if got["p99_refused_ms"] is not None:
                ratios[f"{key}_p99_refused_ms"] = got["p99_refused_ms"]
        closed = overload_scenario(
            f"{label}, X-Deadline-Ms {OVERLOAD_DEADLINE_MS} (overload, admission run)",
            base,
            bodies,
            duration,
            API_KEY,
        )
        rows.append(closed)
        answers = closed.get("statuses", {})
        ratios["closed_c256_goodput_vs_c16"] = closed["rps"] / capacity
        ratios["closed_c256_p99_ms"] = closed["p99_ms"]
        ratios["closed_c256_other_answers"] = sum(
            n for k, n in answers.items() if k not in ("200", "503:overloaded")
        )

    # One key flooding at ten times its quota, another key beside it.
    noisy_env = {
        **env,
        "SCORING_API_KEY_HASHES": f"{hash_key(API_KEY)},{hash_key(NOISY_KEY)}",
        "SCORING_KEY_QUOTAS": f"{hash_key(NOISY_KEY)}={NOISY_RATE:g}/0.25",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = service_command(server, port)
    with running("service_noisy_key", cmd, noisy_env, logs) as service:
        service.wait_ready(base + "/health/ready")
        got = open_loop(
            base,
            [
                {
                    "name": "noisy",
                    "path": SCORE_PATH,
                    "rate": 10 * NOISY_RATE,
                    "bodies": str(bodies),
                    "headers": {**headers, "X-API-Key": NOISY_KEY},
                },
                {
                    "name": "calm",
                    "path": SCORE_PATH,
                    "rate": CALM_RATE,
                    "bodies": str(bodies),
                    "headers": headers,
                },
            ],
            duration,
        )
    for name in ("noisy", "calm"):
        stream = got[name]
        rows.append(
            open_loop_row(
                f"{label}, noisy key at 10x its quota of {NOISY_RATE:g}/s: {name} key", stream
            )
        )
    calm = got["calm"]
    ratios["noisy_key_calm_refusals"] = sum(
        n for status, n in calm["answers"].items() if status != "200"
    ) + sum(calm["errors"].values())
    ratios["noisy_key_calm_p99_ms"] = calm["p99_ok_ms"] if calm["p99_ok_ms"] is not None else -1
    ratios["noisy_key_noisy_429s"] = got["noisy"]["answers"].get("429", 0)
    return rows, ratios


def write_lines(path: Path, documents: list[dict]) -> Path:
    """One compact JSON document per line, for wrk."""
    path.write_text("".join(json.dumps(d, separators=(",", ":")) + "\n" for d in documents))
    return path


def http_scenarios(
    name: str,
    base: str,
    path: str,
    bodies: Path,
    duration: float,
    api_key: str | None,
    connections: tuple[int, ...] = (1, 16),
) -> list[dict]:
    """Warm up, then one wrk run per concurrency."""
    wrk(base + path, bodies, 16, min(3.0, duration), api_key)
    out = []
    for c in connections:
        stats = wrk(base + path, bodies, c, duration, api_key)
        if stats["errors"]:
            logger.warning("%s c=%d: %d errors (non-2xx or socket)", name, c, stats["errors"])
        out.append({"name": name, "concurrency": c, **stats})
        logger.info("%s c=%d: %s", name, c, stats)
    return out


def profile_service(pid: int, base: str, bodies: Path, seconds: float, out: Path) -> str | None:
    """py-spy samples of the service under 16 connections, summarised as text."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return "py-spy not installed (pip install py-spy; it is in the dev extra)"
    raw = out.with_suffix(".raw")
    cmd = [spy, "record", "--pid", str(pid), "--duration", f"{seconds:g}", "--rate", "250"]
    cmd += ["--format", "raw", "--output", str(raw), "--nonblocking"]
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    wrk(base + SCORE_PATH, bodies, 16, seconds, API_KEY)
    output, _ = spy_proc.communicate(timeout=seconds + 60)
    if spy_proc.returncode != 0 or not raw.exists():
        return f"py-spy could not profile the service: {output.decode(errors='replace')[-300:]}"
    out.write_text(summarise_profile(raw.read_text()))
    raw.unlink()
    return None


def summarise_profile(collapsed: str, top: int = 45) -> str:
    """Self and inclusive sample shares per function, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [
        "py-spy profile of the scoring service under wrk -c16 (POST /v1/transactions/score)",
        f"{total} samples; share of samples per function (all threads, idle included)",
        "",
        "self %   function (file:line)",
    ]
    lines += [f"{100 * n / total:6.2f}   {name}" for name, n in own.most_common(top)]
    lines += ["", "incl %   function (file:line)"]
    lines += [f"{100 * n / total:6.2f}   {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def shadow_metrics(base: str) -> dict[str, float]:
    """Rows the shadow scored and rows it dropped (queue full), from the service's metrics."""
    text = httpx.get(base + "/metrics", timeout=10.0).text
    counts = {"scored": 0.0, "dropped": 0.0}
    for line in text.splitlines():
        if line.startswith("scoring_shadow_dropped_total"):
            counts["dropped"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("scoring_variant_requests_total") and 'variant="shadow"' in line:
            counts["scored"] += float(line.rsplit(" ", 1)[1])
    return counts


def batch_call(base: str, bodies: list[dict], repeats: int = 5) -> list[float]:
    """Seconds per score-batch call of all ``bodies`` (after one warm-up call)."""
    payload = json.dumps({"transactions": bodies}).encode()
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    times = []
    with httpx.Client(base_url=base, timeout=120.0, headers=headers) as client:
        for i in range(repeats + 1):
            started = time.perf_counter()
            response = client.post(BATCH_PATH, content=payload)
            elapsed = time.perf_counter() - started
            if response.status_code != 200 or len(response.json()["results"]) != len(bodies):
                raise RuntimeError(f"score-batch failed: {response.status_code} {response.text}")
            if i:
                times.append(elapsed)
    return times


def sdk_reads(world: BenchWorld, rows: list[dict]) -> tuple[float, list[float]]:
    """(seconds for one get_online_features call per row, seconds per call with all rows)."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(world.repo), fs_yaml_file=world.yaml)
    store.get_online_features(features=world.feature_refs, entity_rows=rows[:10])  # warm-up
    started = time.perf_counter()
    for row in rows:
        store.get_online_features(features=world.feature_refs, entity_rows=[row])
    per_row = time.perf_counter() - started
    one_call = []
    for _ in range(3):
        started = time.perf_counter()
        store.get_online_features(features=world.feature_refs, entity_rows=rows)
        one_call.append(time.perf_counter() - started)
    return per_row, one_call


def versions() -> dict[str, str]:
    """Library and tool versions of this run."""
    out = {"python": platform.python_version()}
    for package in (
        "feast",
        "redis",
        "hiredis",
        "fastapi",
        "starlette",
        "pydantic",
        "uvicorn",
        "uvloop",
        "httptools",
        "orjson",
        "onnxruntime",
        "numpy",
        "protobuf",
    ):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    for tool, flag in (("redis-server", "--version"), ("wrk", "--version")):
        try:
            text = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10)
            out[tool] = (text.stdout or text.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            out[tool] = "absent"
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def check(value: float, rule: tuple[str, float]) -> bool:
    op, bound = rule
    return value >= bound if op == ">=" else value <= bound


def table(results: dict) -> str:
    """The printed table: scenarios, then ratios against their targets."""
    rows = [f"{'scenario':<40} {'conc':>4} {'rps':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>6}"]
    for s in results["scenarios"]:
        rows.append(
            f"{s['name']:<40} {s['concurrency']:>4} {s['rps']:>9.1f} "
            f"{s['p50_ms']:>9.3f} {s['p99_ms']:>9.3f} {s.get('errors', 0):>6}"
        )
    rows += ["", f"{'measure':<40} {'value':>9}   target"]
    for name, value in results["ratios"].items():
        rule = TARGETS.get(name)
        mark = (
            ""
            if rule is None
            else f"{rule[0]} {rule[1]:g}  " + ("met" if check(value, rule) else "MISSED")
        )
        rows.append(f"{name:<40} {value:>9.2f}   {mark}")
    return "\n".join(rows)


def main() -> None:
    """Run every scenario and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--rows", type=int, default=100_000, help="generated transactions")
    parser.add_argument("--entities", type=int, default=100_000, help="keys per feature view")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per wrk run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--only",
        choices=["admission", "family", "stream"],
        help="run only these rows: admission = capacity, open loop at 0.5x-5x, closed loop "
        "c=256 and the noisy key (results in <out>/admission.json); family = 200 family members "
        "under a budget of 50 versus the single model (results in <out>/family.json); stream = "
        "stream scoring at saturation and at half rate versus the service at c=16 (results in "
        "<out>/stream.json)",
    )
    parser.add_argument(
        "--stream-events", type=int, default=20_000, help="events of the stream saturation run"
    )
    parser.add_argument(
        "--server",
        choices=["uvicorn", "granian"],
        default="uvicorn",
        help="with --only admission: the server of its rows (granian: "
        "<out>/admission-granian.json)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed; run `make setup`")

    from scoring_service.core.security import hash_key

    started_at = datetime.now(UTC)
    load_start = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    scenarios: list[dict] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_text:
        tmp = Path(tmp_text)
        logs = args.workdir / "logs"  # process logs stay for a look after the run
        logs.mkdir(parents=True, exist_ok=True)
        with redis_server(tmp) as redis_url:
            world = build_world(args.workdir, redis_url, rows=args.rows, entities=args.entities)
            bodies = write_lines(tmp / "bodies.jsonl", world.bodies)
            feast_bodies = write_lines(tmp / "feast_bodies.jsonl", world.feast_bodies)
            env = {
                "REDIS_CONNECTION_STRING": redis_url,
                "SCORING_FEATURE_REPO": str(world.repo),
                "SCORING_FEATURE_STORE_YAML": str(world.yaml),
                "SCORING_MODEL_ROOT": str(world.model_root),
                "SCORING_API_KEY_HASHES": hash_key(API_KEY),
                # Deadlines long enough that wrk measures every score's own latency (a busy
                # machine would otherwise turn slow calls into fast 503 outage answers), and that
                # the 10,000-row batch call is measured, not cut short.
                "SCORING_DEADLINE_MS": "1000",
                "SCORING_BATCH_DEADLINE_MS": "120000",
                "SCORING_MODEL_NAME": "fraud_model",  # the package build_world trains
            }

            if args.only == "admission":
                admission_rows, admission_ratios = admission_scenarios(
                    env, bodies, logs, args.duration, args.server
                )
                if args.server != "uvicorn":
                    args.only_name = f"admission-{args.server}"
                write_admission(args, started_at, load_start, admission_rows, admission_ratios)
                return
            if args.only == "stream":
                stream_rows, stream_ratios = run_stream(env, redis_url, world, bodies, logs, args)
                write_only(args, "stream", started_at, load_start, stream_rows, stream_ratios)
                return
            if args.only == "family":
                family_rows, family_ratios, family = run_family(env, world, tmp, logs, args)
                write_only(
                    args, "family", started_at, load_start, family_rows, family_ratios, family
                )
                return

            # (a) the service, 1 worker: c=1, c=16, overload at c=256, and (d) its batch call
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "scoring_service", "serve", "--port", str(port)]
            label = "service POST /v1/transactions/score"
            with running("service", cmd, env, logs) as service:
                ready_s = service.wait_ready(base + "/health/ready")
                scenarios += http_scenarios(label, base, SCORE_PATH, bodies, args.duration, API_KEY)
                rss_mb = service.rss_mb()
                overload = overload_scenario(
                    f"{label}, X-Deadline-Ms {OVERLOAD_DEADLINE_MS} (overload)",
                    base,
                    bodies,
                    args.duration,
                    API_KEY,
                )
                scenarios.append(overload)
                try:
                    batch_times = batch_call(base, world.bodies[:BATCH_ROWS])
                except RuntimeError as exc:
                    notes.append(str(exc)[:500])
                    logger.error("%s", exc)
                    batch_times = [float("nan")]
                if not args.no_profile:
                    note = profile_service(
                        service.pid,
                        base,
                        bodies,
                        min(args.duration, 8.0),
                        args.out / "profile_service_c16.txt",
                    )
                    if note:
                        notes.append(note)
                        logger.warning(note)

            # (a2) the service with 2 worker processes (metrics aggregated across them)
            port = free_port()
            base2 = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "scoring_service", "serve", "--port", str(port)]
            with running("service_2_workers", cmd, {**env, "SCORING_WORKERS": "2"}, logs) as two:
                two.wait_log("ready: model", count=2)
                two.wait_ready(base2 + "/health/ready")
                scenarios += http_scenarios(
                    f"{label}, 2 workers", base2, SCORE_PATH, bodies, args.duration, API_KEY
                )
                worker_rss = two.worker_rss_mb()

            # (a2) the service, 1 worker, under granian instead of uvicorn
            port = free_port()
            cmd = service_command("granian", port)
            if Path(cmd[0]).exists():
                base_g = f"http://127.0.0.1:{port}"
                with running("service_granian", cmd, env, logs) as on_granian:
                    on_granian.wait_ready(base_g + "/health/ready")
                    scenarios += http_scenarios(
                        f"{label}, granian", base_g, SCORE_PATH, bodies, args.duration, API_KEY
                    )
                    scenarios.append(
                        overload_scenario(
                            f"{label}, granian (overload)", base_g, bodies, args.duration, API_KEY
                        )
                    )
            else:
                notes.append("granian not installed (it is in the dev extra): no granian run")

            # (a3) a deployment of the champion alone, then with one shadow on every request
            shadow_counts: dict[str, float] = {}
            for name, spec in DEPLOYMENTS.items():
                file = tmp / f"deployment_{name}.json"
                file.write_text(json.dumps(spec))
                port = free_port()
                base_d = f"http://127.0.0.1:{port}"
                cmd = [sys.executable, "-m", "scoring_service", "serve", "--port", str(port)]
                deployed = {**env, "SCORING_DEPLOYMENT": str(file)}
                with running(f"service_{name}", cmd, deployed, logs) as process:
                    process.wait_ready(base_d + "/health/ready")
                    scenarios += http_scenarios(
                        f"{label}, deployment: {name}",
                        base_d,
                        SCORE_PATH,
                        bodies,
                        args.duration,
                        API_KEY,
                        connections=(16,),
                    )
                    if name == "champion + shadow":
                        shadow_counts = shadow_metrics(base_d)

            # (f) a model family of 200 members under a budget of 50, versus the single model
            family_rows, family_ratios, family = run_family(env, world, tmp, logs, args)
            scenarios += family_rows

            # (b) feast serve, feature lookup only, same entities and features
            port = free_port()
            feast_base = f"http://127.0.0.1:{port}"
            feast = str(Path(sys.executable).parent / "feast")
            cmd = [feast, "-f", world.yaml.name, "serve", "--host", "127.0.0.1", "--port"]
            # One worker like the service; recycling it every 1,000 requests (the default)
            # would cost Feast during the runs, so it is effectively off.
            cmd += [str(port), "--no-access-log", "--workers", "1", "--max-requests", "10000000"]
            with running("feast_serve", cmd, env, logs, cwd=world.repo) as feast_serve:
                feast_serve.wait_ready(feast_base + "/health")
                scenarios += http_scenarios(
                    "feast serve /get-online-features",
                    feast_base,
                    FEAST_PATH,
                    feast_bodies,
                    args.duration,
                    None,
                )

            # (c) the framework's and the HTTP stack's ceilings, same server settings
            for app, name in (
                ("trivial", "trivial FastAPI endpoint"),
                ("bare", "bare ASGI app, fixed JSON body"),
            ):
                port = free_port()
                anchor_base = f"http://127.0.0.1:{port}"
                cmd = [sys.executable, "-m", "bench.trivial_app", "--app", app, "--port", str(port)]
                with running(app, cmd, {}, logs) as anchor:
                    anchor.wait_ready(anchor_base + "/health/ready")
                    scenarios += http_scenarios(
                        name, anchor_base, SCORE_PATH, bodies, args.duration, None
                    )
                    if app == "bare":  # the HTTP stack's own tail at the overload's connections
                        scenarios.append(
                            overload_scenario(
                                f"{name} (overload)", anchor_base, bodies, args.duration, None
                            )
                        )

            # (e) admission under overload: open loop, closed loop c=256, a noisy key
            admission_rows, admission_ratios = admission_scenarios(env, bodies, logs, args.duration)
            scenarios += admission_rows

            # (g) stream scoring against the service's c=16 (measured again in this phase)
            stream_rows, stream_ratios = run_stream(env, redis_url, world, bodies, logs, args)
            scenarios += stream_rows

            # (d) Feast's SDK reading the same 10,000 rows
            rows = [{k: v[0] for k, v in b["entities"].items()} for b in world.feast_bodies]
            per_row_s, one_call_s = sdk_reads(world, rows[:BATCH_ROWS])

    batch_s = statistics.median(batch_times)
    scenarios += [
        batch_scenario("service score-batch (10,000 rows/call)", batch_times),
        batch_scenario("Feast SDK, one call per row (10,000)", [per_row_s]),
        batch_scenario("Feast SDK, one call with 10,000 rows", one_call_s),
    ]

    def find(name: str, c: int) -> dict:
        return next(s for s in scenarios if s["name"] == name and s["concurrency"] == c)

    ours16, ours1 = find(label, 16), find(label, 1)
    trivial16 = find("trivial FastAPI endpoint", 16)
    answers = overload.get("statuses", {})
    other_answers = sum(n for k, n in answers.items() if k not in ("200", "503:overloaded"))
    ratios = {
        "throughput_vs_feast_serve": ours16["rps"]
        / find("feast serve /get-online-features", 16)["rps"],
        "throughput_vs_trivial": ours16["rps"] / trivial16["rps"],
        "throughput_vs_bare_asgi": ours16["rps"]
        / find("bare ASGI app, fixed JSON body", 16)["rps"],
        "c1_p50_vs_trivial": ours1["p50_ms"] / find("trivial FastAPI endpoint", 1)["p50_ms"],
        "c16_p99_ms": ours16["p99_ms"],
        "c16_p99_vs_trivial_p99": ours16["p99_ms"] / trivial16["p99_ms"],
        "c16_p99_vs_own_p50": ours16["p99_ms"] / ours16["p50_ms"],
        "overload_p99_ms": overload["p99_ms"],
        "overload_p99_vs_bare_asgi_c256_p99": overload["p99_ms"]
        / find("bare ASGI app, fixed JSON body (overload)", OVERLOAD_CONNECTIONS)["p99_ms"],
        "overload_other_answers": other_answers,
        "throughput_2_workers_vs_1": find(f"{label}, 2 workers", 16)["rps"] / ours16["rps"],
        "batch_speedup_vs_sdk": per_row_s / batch_s,
        "batch_speedup_vs_sdk_one_call": statistics.median(one_call_s) / batch_s,
        "rss_mb": rss_mb,
        "rss_mb_per_worker_2_workers": max(worker_rss, default=float("nan")),
        "ready_s": ready_s,
    }
    alone = find(f"{label}, deployment: champion", 16)
    shadowed = find(f"{label}, deployment: champion + shadow", 16)
    ratios["throughput_with_shadow_vs_without"] = shadowed["rps"] / alone["rps"]
    ratios["c16_p99_with_shadow_vs_without"] = shadowed["p99_ms"] / alone["p99_ms"]
    scored = shadow_counts.get("scored", 0.0)
    dropped = shadow_counts.get("dropped", 0.0)
    ratios["shadow_dropped_share"] = dropped / (scored + dropped) if scored + dropped else 0.0
    if any(s["name"] == f"{label}, granian" for s in scenarios):
        ratios["granian_throughput_vs_uvicorn"] = (
            find(f"{label}, granian", 16)["rps"] / ours16["rps"]
        )
        ratios["granian_c16_p99_vs_uvicorn"] = (
            find(f"{label}, granian", 16)["p99_ms"] / ours16["p99_ms"]
        )
        ratios["granian_overload_p99_ms"] = find(
            f"{label}, granian (overload)", OVERLOAD_CONNECTIONS
        )["p99_ms"]
    ratios.update(admission_ratios)
    ratios.update(family_ratios)
    ratios.update(stream_ratios)
    ratios = {k: round(v, 3) for k, v in ratios.items()}
    load_end = os.getloadavg()
    results = {
        "command": "make bench",
        "started_at": started_at.isoformat(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            # 1, 5 and 15 minute load averages: other work on the machine bounds every number.
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in load_end],
        },
        "versions": versions(),
        "world": {
            "transactions": args.rows,
            "entities_per_join_key": world.entities_per_view,
            "stale_share_per_view": {k: round(v, 4) for k, v in world.stale_share.items()},
            "request_bodies": len(world.bodies),
            "setup_seconds": world.timings,
        },
        "wrk": {"duration_s": args.duration, "threads": "1 at c=1, 2 otherwise"},
        "scenarios": scenarios,
        "ratios": ratios,
        "overload": {
            "connections": OVERLOAD_CONNECTIONS,
            "deadline_ms": OVERLOAD_DEADLINE_MS,
            "answers": answers,
        },
        "service": {
            "rss_mb": round(rss_mb, 1),
            "rss_mb_workers_2": [round(x, 1) for x in worker_rss],
            "ready_s": round(ready_s, 3),
        },
        "targets": {
            name: {"rule": f"{rule[0]} {rule[1]:g}", "met": check(ratios[name], rule)}
            for name, rule in TARGETS.items()
            if name in ratios
        },
        "shadow": shadow_counts,
        "family": family,
        "notes": notes,
    }
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=2) + "\n"
    (args.out / "latest.json").write_text(text)
    (args.out / f"{stamp}.json").write_text(text)
    print()
    print(table(results))
    print(f"\nresults: {args.out / 'latest.json'} (and {stamp}.json)")


def run_family(
    env: dict[str, str], world: BenchWorld, tmp: Path, logs: Path, args: argparse.Namespace
) -> tuple[list[dict], dict[str, float], dict[str, Any]]:
    """(f): the family row (``bench/family.py``) with this module's helpers."""
    from bench import family

    return family.family_rows(sys.modules[__name__], env, world, tmp, logs, args.duration)


def run_stream(
    env: dict[str, str],
    redis_url: str,
    world: BenchWorld,
    bodies: Path,
    logs: Path,
    args: argparse.Namespace,
) -> tuple[list[dict], dict[str, float]]:
    """(g): the service at c=16, then one stream-scoring process (``bench/stream.py``), one after
    the other on the same Redis and bodies; the ratio of the two."""
    from bench import stream

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "scoring_service", "serve", "--port", str(port)]
    label = "service POST /v1/transactions/score (stream phase)"
    with running("service_stream_phase", cmd, env, logs) as service:
        service.wait_ready(base + "/health/ready")
        http = http_scenarios(
            label, base, SCORE_PATH, bodies, args.duration, API_KEY, connections=(16,)
        )
    rows, ratios = stream.stream_rows(
        sys.modules[__name__],
        env,
        redis_url,
        world.bodies,
        logs,
        args.duration,
        events=args.stream_events,
    )
    ratios["stream_vs_http_c16"] = ratios["stream_events_per_s"] / http[0]["rps"]
    # the online learner's learn and predict rates, on the bench model's feature list
    import numpy as np

    from models.package import package_dir, read_manifest

    names = read_manifest(package_dir(world.model_root, "fraud_model", "v1")).features
    matrix = np.random.default_rng(7).normal(size=(5_000, len(names)))
    learner, learner_ratios = stream.learner_rows(list(names), matrix, logs)
    ratios.update(learner_ratios)
    return http + rows + learner, ratios


def write_only(
    args: argparse.Namespace,
    name: str,
    started_at: datetime,
    load_start: tuple[float, float, float],
    rows: list[dict],
    ratios: dict[str, float],
    details: dict | None = None,
) -> None:
    """``--only <name>``: its rows and ratios (and details) to <out>/<name>.json (and a stamped
    copy)."""
    args.only_name = name
    write_admission(args, started_at, load_start, rows, ratios, details)


def write_admission(
    args: argparse.Namespace,
    started_at: datetime,
    load_start: tuple[float, float, float],
    rows: list[dict],
    ratios: dict[str, float],
    details: dict | None = None,
) -> None:
    """``--only admission``: its rows and ratios to <out>/admission.json (and a stamped copy),
    with the machine's load before and after."""
    ratios = {k: round(v, 3) for k, v in ratios.items()}
    results = {
        "command": " ".join(["bench/run.py", *sys.argv[1:]]),
        "started_at": started_at.isoformat(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "duration_s": args.duration,
        "scenarios": rows,
        "ratios": ratios,
        "targets": {
            name: {"rule": f"{rule[0]} {rule[1]:g}", "met": check(ratios[name], rule)}
            for name, rule in TARGETS.items()
            if name in ratios
        },
    }
    if details is not None:
        results["details"] = details
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=2) + "\n"
    name = getattr(args, "only_name", "admission")
    (args.out / f"{name}.json").write_text(text)
    (args.out / f"{name}-{stamp}.json").write_text(text)
    print()
    print(table(results))
    print(f"\nresults: {args.out / f'{name}.json'}")


def batch_scenario(name: str, seconds: list[float]) -> dict:
    """A batch measurement as a scenario row: rows/s, median and worst call time."""
    median = statistics.median(seconds)
    return {
        "name": name,
        "concurrency": 1,
        "rps": round(BATCH_ROWS / median, 1),
        "p50_ms": round(median * 1000, 3),
        "p99_ms": round(max(seconds) * 1000, 3),
        "calls": len(seconds),
    }


if __name__ == "__main__":
    main()
