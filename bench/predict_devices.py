"""Prediction throughput by batch size: TreeEnsemble on the CPU, the standard-operator graph on
the CPU, and the standard-operator graph on CUDA when a GPU is there.

    python bench/predict_devices.py            # or: make bench-predict

Reads a model package (default ``models/packages/fraud_model/v1``, as ``make train`` writes it;
without one it trains a 300-tree / 31-leaf LightGBM on 21 synthetic features). Inputs are drawn
around the model's own split thresholds, with a few NaNs, so rows take varied paths. Sessions are
built the way the service builds them (``scoring_service.stages.predictor``): CUDA sessions refuse
CPU
fallback, standard-operator graphs run in slices of at most ``--max-rows`` rows, and timings
include the copies to and from the GPU. Prints one table and writes a JSON list of
``{graph, provider, device_name, batch, rows_per_s, threads}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scoring_service.stages.predictor import (  # noqa: E402
    CPU_PROVIDER,
    CUDA_PROVIDER,
    DEFAULT_GPU_MAX_ROWS,
    CudaUnavailable,
    cuda_session,
    session_options,
)

logger = logging.getLogger("bench.predict_devices")

DEFAULT_PACKAGE = ROOT / "models" / "packages" / "fraud_model" / "v1"
DEFAULT_OUT = ROOT / "bench" / "results" / "predict_devices.json"
DEFAULT_BATCHES = "1,64,1024,16384,131072"


@dataclass
class Graphs:
    """The graphs to compare, as serialized ONNX, and the LightGBM model text if any."""

    tree_ensemble: bytes
    standard_gemm: bytes
    standard_traversal: bytes | None
    booster_text: str | None
    source: str


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (or platform), with the core count ONNX Runtime can use."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


def gpu_name(device_id: int) -> str:
    """GPU name from nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", str(device_id)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip() or "unknown GPU"
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"


def synthetic_package() -> Graphs:
    """A 300-tree / 31-leaf LightGBM on 21 features, exported like `make train` does."""
    import lightgbm as lgb

    from models import export

    rng = np.random.default_rng(0)
    n, f = 60_000, 21
    x = rng.lognormal(1.0, 1.0, (n, f)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    logit = np.nan_to_num(x[:, :6]).sum(axis=1) / 6 - 3.5 + rng.normal(0, 1, n)
    y = (logit > 0).astype(np.int32)
    params = {"objective": "binary", "num_leaves": 31, "learning_rate": 0.05, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x.astype(np.float64), y), num_boost_round=300)
    return Graphs(
        tree_ensemble=export.tree_ensemble_graph(booster, f).SerializeToString(),
        standard_gemm=export.standard_ops_graph(booster).SerializeToString(),
        standard_traversal=None,
        booster_text=booster.model_to_string(),
        source="synthetic LightGBM, 300 trees x 31 leaves, 21 features",
    )


def load_graphs(package: Path, traversal_graph: Path | None) -> Graphs:
    """The package's two graphs, plus the traversal form (file, or compiled with LightGBM)."""
    if not (package / "manifest.json").is_file():
        logger.warning("no model package at %s; training a synthetic one", package)
        graphs = synthetic_package()
    else:
        manifest = json.loads((package / "manifest.json").read_text())
        booster_file = package / "model.lgb.txt"
        graphs = Graphs(
            tree_ensemble=(package / manifest["graphs"]["cpu"]["file"]).read_bytes(),
            standard_gemm=(package / manifest["graphs"]["gpu"]["file"]).read_bytes(),
            standard_traversal=None,
            booster_text=booster_file.read_text() if booster_file.is_file() else None,
            source=f"package {manifest['name']}/{manifest['version']} "
            f"({manifest.get('training', {}).get('num_trees', '?')} trees, "
            f"{len(manifest['features'])} features)",
        )
    if traversal_graph is not None:
        graphs.standard_traversal = traversal_graph.read_bytes()
    elif graphs.booster_text is not None:
        try:
            import lightgbm as lgb

            from models.standard_graph import compile_booster

            booster = lgb.Booster(model_str=graphs.booster_text)
            graphs.standard_traversal = compile_booster(
                booster, input_name="features", output_name="probabilities", strategy="traversal"
            ).SerializeToString()
        except ImportError:
            logger.warning("lightgbm is not installed: no traversal graph (pass one instead)")
    return graphs


def sample_inputs(booster_text: str | None, n_features: int, rows: int, seed: int) -> np.ndarray:
    """Rows around the model's split thresholds (so paths vary), 3 % NaN."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n_features)).astype(np.float32)
    if booster_text is None:
        return x
    thresholds: list[list[float]] = [[] for _ in range(n_features)]
    features: list[int] = []
    for line in booster_text.splitlines():
        if line.startswith("split_feature="):
            features = [int(v) for v in line.split("=", 1)[1].split()]
        elif line.startswith("threshold=") and features:
            for feature, value in zip(features, line.split("=", 1)[1].split(), strict=True):
                if abs(float(value)) < 1e300:
                    thresholds[feature].append(float(value))
            features = []
    for j, values in enumerate(thresholds):
        if not values:
            x[:, j] = 0.0
            continue
        picked = np.asarray(values)[rng.integers(0, len(values), rows)]
        spread = np.abs(picked) * 0.05 + 1e-3
        x[:, j] = (picked + rng.normal(size=rows) * spread).astype(np.float32)
    x[rng.random(x.shape) < 0.03] = np.nan
    return x


class Runner:
    """One session and how to feed it (slices of at most max_rows for standard graphs)."""

    def __init__(self, session: ort.InferenceSession, max_rows: int | None) -> None:
        self.session = session
        self.max_rows = max_rows
        self.input = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]
        # The TreeEnsemble graph also has a label output; both graphs name the one we want.
        self.output = "probabilities" if "probabilities" in names else names[-1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        step = self.max_rows or len(x)
        parts = [
            self.session.run([self.output], {self.input: x[i : i + step]})[0]
            for i in range(0, len(x), step)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def rows_per_second(run: Runner, x: np.ndarray, min_time: float, max_reps: int) -> float:
    """Batch rows / median seconds per call, after one warm-up call."""
    run(x)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - started < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return len(x) / float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--traversal-graph", type=Path, default=None)
    parser.add_argument("--batches", default=DEFAULT_BATCHES)
    parser.add_argument(
        "--threads",
        default=f"1,{os.cpu_count()}",
        help="CPU intra-op thread counts (the service uses 1 per session).",
    )
    parser.add_argument("--max-rows", type=int, default=DEFAULT_GPU_MAX_ROWS)
    parser.add_argument("--min-time", type=float, default=0.5, help="Seconds per measurement.")
    parser.add_argument("--max-reps", type=int, default=5000)
    parser.add_argument("--device-id", type=int, default=0)
    parser.add_argument("--no-cpu-standard", action="store_true", help="Skip CPU standard graphs.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    batches = [int(b) for b in args.batches.split(",")]
    threads = sorted({int(t) for t in args.threads.split(",")})
    graphs = load_graphs(args.package, args.traversal_graph)
    probe = ort.InferenceSession(graphs.tree_ensemble, providers=[CPU_PROVIDER])
    n_features = int(probe.get_inputs()[0].shape[1])
    x_all = sample_inputs(graphs.booster_text, n_features, max(batches), seed=1)
    logger.info("model: %s; onnxruntime %s", graphs.source, ort.__version__)

    standard = {"standard_gemm": graphs.standard_gemm}
    if graphs.standard_traversal is not None:
        standard["standard_traversal"] = graphs.standard_traversal
    configs: list[tuple[str, str, str, int | None, Runner]] = []
    cpu = cpu_name()
    for t in threads:
        configs.append(
            (
                "tree_ensemble",
                CPU_PROVIDER,
                cpu,
                t,
                Runner(
                    ort.InferenceSession(
                        graphs.tree_ensemble, session_options(t), providers=[CPU_PROVIDER]
                    ),
                    None,
                ),
            )
        )
        if not args.no_cpu_standard:
            for name, payload in standard.items():
                session = ort.InferenceSession(
                    payload, session_options(t), providers=[CPU_PROVIDER]
                )
                configs.append((name, CPU_PROVIDER, cpu, t, Runner(session, args.max_rows)))
    if CUDA_PROVIDER in ort.get_available_providers():
        gpu = gpu_name(args.device_id)
        for name, payload in standard.items():
            try:
                session = cuda_session(payload, device_id=args.device_id)
            except CudaUnavailable as exc:
                logger.error("%s on CUDA: %s", name, exc)
                continue
            configs.append((name, CUDA_PROVIDER, gpu, None, Runner(session, args.max_rows)))
    else:
        logger.info("no CUDA execution provider in this onnxruntime: CPU rows only")

    # Every graph must give the same probabilities before its speed means anything.
    check = x_all[: min(4096, len(x_all))]
    reference = configs[0][4](check)
    for name, provider, _, threads_used, run in configs[1:]:
        diff = float(np.max(np.abs(run(check) - reference)))
        if not diff <= 1e-5:
            raise SystemExit(f"{name} on {provider} (threads {threads_used}) differs by {diff:.3g}")

    results: list[dict[str, Any]] = []
    for name, provider, device, threads_used, run in configs:
        for batch in batches:
            rate = rows_per_second(run, x_all[:batch], args.min_time, args.max_reps)
            row = {
                "graph": name,
                "provider": provider,
                "device_name": device,
                "batch": batch,
                "rows_per_s": round(rate, 1),
                "threads": threads_used,
            }
            logger.info("%s", row)
            results.append(row)

    print(table(results, batches))
    crossover = gpu_crossover(results, batches)
    if crossover:
        print(crossover)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False) as handle:
        json.dump(results, handle, indent=1)
        handle.write("\n")
    os.replace(handle.name, args.out)
    print(f"wrote {len(results)} rows to {args.out}")
    return 0


def _label(row: dict[str, Any]) -> str:
    provider = "CUDA" if row["provider"] == CUDA_PROVIDER else f"CPU {row['threads']} thr"
    return f"{row['graph']} / {provider}"


def table(results: list[dict[str, Any]], batches: list[int]) -> str:
    """Rows per second, one line per graph and provider, one column per batch size."""
    lines = [
        f"{'graph / provider':<36}" + "".join(f"{b:>13,}" for b in batches),
        "-" * (36 + 13 * len(batches)),
    ]
    keys: dict[str, dict[int, float]] = {}
    for row in results:
        keys.setdefault(_label(row), {})[int(row["batch"])] = float(row["rows_per_s"])
    for label, by_batch in keys.items():
        lines.append(
            f"{label:<36}" + "".join(f"{by_batch.get(b, float('nan')):>13,.0f}" for b in batches)
        )
    devices = sorted({str(row["device_name"]) for row in results})
    lines.append("devices: " + "; ".join(devices))
    return "\n".join(lines)


def gpu_crossover(results: list[dict[str, Any]], batches: list[int]) -> str | None:
    """Smallest batch where the best CUDA graph beats TreeEnsemble on one CPU thread."""

    def best(rows: list[dict[str, Any]], batch: int) -> float:
        return max((float(r["rows_per_s"]) for r in rows if r["batch"] == batch), default=0.0)

    cuda = [r for r in results if r["provider"] == CUDA_PROVIDER]
    cpu1 = [r for r in results if r["graph"] == "tree_ensemble" and r["threads"] == 1]
    if not cuda or not cpu1:
        return None
    parts = []
    first = None
    for batch in batches:
        ratio = best(cuda, batch) / max(best(cpu1, batch), 1e-9)
        parts.append(f"{batch:,}: {ratio:.2f}x")
        if first is None and ratio > 1.0:
            first = batch
    return (
        "CUDA (best graph) vs TreeEnsemble on 1 CPU thread: "
        + ", ".join(parts)
        + f"; GPU first faster at batch {first if first is not None else 'never'}"
    )


if __name__ == "__main__":
    sys.exit(main())
