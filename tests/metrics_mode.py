"""A pytest plugin loaded before any test module: the test process keeps its metrics in memory.

prometheus_client picks in-memory or file-backed metrics when it is first imported, and Feast's
metrics module, imported first, points it at files. A single-worker service keeps them in memory
(``scoring_service/core/process.py``); tests that read ``/metrics`` of an in-process app must see
the
same, whatever earlier tests imported.
"""

import os

for _variable in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
    os.environ.pop(_variable, None)

import prometheus_client  # noqa: E402, F401
