"""What a long-lived server process does for itself: garbage-collector policy, and Prometheus
metrics shared by several worker processes.

Garbage collector
-----------------
CPython's cyclic collector runs a collection of the oldest generation now and then, and that
collection walks every container object the process holds. After start-up the service holds a
large, permanent object graph (the Feast SDK, its protobuf registry, pandas, ONNX Runtime's
bindings, the model package): walking it took tens of milliseconds, so an unlucky request
waited that long for an answer it needed in 50 ms. ``settle_heap`` runs once the service has
warmed up, before it reports ready:

1. ``gc.collect()``: what start-up left as garbage is freed, not frozen;
2. ``gc.freeze()``: every object alive now moves to a permanent generation that collections
   never walk again (the start-up graph is not garbage and never will be);
3. ``gc.set_threshold(*SCORING_GC_THRESHOLDS)``: the young generation is collected after
   10,000 net allocations instead of 700. A request allocates a few hundred short-lived
   containers; collecting the youngest generation every couple of requests cost time for
   nothing. What is left to walk after the freeze is only what requests allocated, so each
   collection stays short. ``SCORING_GC_FREEZE=false`` turns the policy off.

Workers
-------
``SCORING_WORKERS=N`` (N > 1) runs N uvicorn worker processes on one socket. Each process has its
own metrics; Prometheus must see their sum. ``prepare_metrics_dir`` (called by ``serve`` before
the workers start) switches prometheus_client to its multiprocess mode: every process writes its
samples to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics``, answered by whichever worker,
aggregates all of them (counters and histograms summed; gauges as each declares:
``scoring_in_flight`` summed over live workers, the circuit gauge the max). Feast's own metrics
module sets the same variable when it is imported first; the service decides it itself instead,
before any worker imports prometheus_client (the mode is chosen at that import).
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, values

logger = logging.getLogger(__name__)

MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
"""prometheus_client reads the first; Feast's metrics module reads and sets both."""


def settle_heap(freeze: bool, thresholds: tuple[int, int, int]) -> None:
    """Collect start-up garbage, freeze what is left, and set the collector's thresholds."""
    if not freeze:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    logger.info(
        "garbage collector: %d start-up objects frozen, thresholds %s",
        gc.get_freeze_count(),
        thresholds,
    )


def multiprocess_mode() -> bool:
    """Whether this process keeps its metrics in files shared with other processes."""
    return values.ValueClass is not values.MutexValue


def prepare_metrics_dir(workers: int) -> Path | None:
    """Before starting several workers: an empty directory for their metric files, named in
    the environment the workers inherit. Returns the directory when this call created it (the
    caller removes it at exit); an operator's ``PROMETHEUS_MULTIPROC_DIR`` is used as given,
    emptied of the files of earlier runs."""
    if workers <= 1:
        return None
    given = os.environ.get(MULTIPROC_ENV[0])
    if given:
        directory, created = Path(given), None
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    else:
        directory = Path(tempfile.mkdtemp(prefix="scoring-metrics-"))
        created = directory
    for name in MULTIPROC_ENV:
        os.environ[name] = str(directory)
    logger.info("metrics of %d workers aggregated through %s", workers, directory)
    return created


def remove_metrics_dir(directory: Path | None) -> None:
    """Remove a directory ``prepare_metrics_dir`` created."""
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def metrics_exposition() -> bytes:
    """The Prometheus text of this service: of every worker process in multiprocess mode."""
    if not multiprocess_mode():
        return generate_latest(REGISTRY)
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)


def process_stopped() -> None:
    """A worker leaves: its live gauges stop counting (its counters stay in the sums)."""
    if multiprocess_mode():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
