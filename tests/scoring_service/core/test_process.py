"""What a long-lived server process does for itself: the garbage-collector policy after warm-up,
and Prometheus metrics of several worker processes aggregated through one directory.

Each check runs in a fresh Python process (the collector's state and prometheus_client's mode
are process-wide), started with this repository on its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scoring_service.core.process import MULTIPROC_ENV, prepare_metrics_dir, remove_metrics_dir
from tests.conftest import ROOT


def python(code: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter without any inherited metrics directory."""
    environment = {k: v for k, v in os.environ.items() if k not in MULTIPROC_ENV}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**environment, **(env or {})},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_settle_heap_collects_freezes_and_sets_the_thresholds() -> None:
    out = python(
        """
        import gc, json, weakref
        from scoring_service.core.process import settle_heap

        class Node:
            pass

        before = gc.get_threshold()
        settle_heap(False, (1, 2, 3))  # the policy off: nothing changes
        off = (gc.get_threshold(), gc.get_freeze_count())
        gc.disable()  # only settle_heap may free it
        garbage = Node()
        garbage.itself = garbage  # a cycle only the collector frees
        freed = weakref.ref(garbage)
        del garbage
        settle_heap(True, (12_345, 11, 12))
        print(json.dumps([before, off, gc.get_threshold(), gc.get_freeze_count(), freed() is None]))
        """
    )
    before, off, thresholds, frozen, collected = json.loads(out)
    assert off == [before, 0]
    assert thresholds == [12_345, 11, 12]
    assert frozen > 1_000  # the interpreter's start-up heap
    assert collected  # start-up garbage was freed before the freeze, not frozen


def test_one_worker_keeps_its_metrics_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in MULTIPROC_ENV:
        monkeypatch.delenv(name, raising=False)
    assert prepare_metrics_dir(1) is None
    assert not any(name in os.environ for name in MULTIPROC_ENV)
    assert (
        python(
            "from scoring_service.core.process import multiprocess_mode; print(multiprocess_mode())"
        ).strip()
        == "False"
    )


def test_several_workers_get_a_fresh_directory_removed_at_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in MULTIPROC_ENV:
        monkeypatch.delenv(name, raising=False)
    created = prepare_metrics_dir(3)
    try:
        assert created is not None and created.is_dir() and not any(created.iterdir())
        assert [os.environ[name] for name in MULTIPROC_ENV] == [str(created)] * 2
    finally:
        remove_metrics_dir(created)
    assert created is not None and not created.exists()
    remove_metrics_dir(None)  # nothing created: nothing to remove


def test_an_operators_directory_is_kept_and_emptied_of_earlier_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"an earlier run")
    (given / "README").write_text("kept")
    monkeypatch.setenv(MULTIPROC_ENV[0], str(given))
    monkeypatch.delenv(MULTIPROC_ENV[1], raising=False)
    assert prepare_metrics_dir(2) is None  # not created here: not removed at exit
    assert sorted(p.name for p in given.iterdir()) == ["README"]
    assert os.environ[MULTIPROC_ENV[1]] == str(given)


WORKER = """
    import os
    from scoring_service.core import metrics
    from scoring_service.core.process import multiprocess_mode, process_stopped
    assert multiprocess_mode()
    metrics.ERRORS.labels("overloaded", "service").inc({count})
    metrics.MODEL_INFO.labels("fraud_model/v1", "cpu", "cpu", "0").set(1)
    if {stop}:
        process_stopped()
"""
SCRAPE = """
    from scoring_service.core.process import metrics_exposition
    print(metrics_exposition().decode())
"""


def test_the_exposition_sums_every_workers_counters_and_keeps_live_gauges(
    tmp_path: Path,
) -> None:
    """Two workers count refusals in one directory; a scrape, from any process, sums them.
    The worker that stopped no longer reports its per-worker gauge; the live one does."""
    env = {MULTIPROC_ENV[0]: str(tmp_path)}
    python(WORKER.format(count=3, stop=False), env)
    python(WORKER.format(count=4, stop=True), env)
    text = python(SCRAPE, env)
    assert 'scoring_errors_total{code="overloaded",stage="service"} 7.0' in text
    info = [line for line in text.splitlines() if line.startswith("scoring_model_info{")]
    assert len(info) == 1 and info[0].endswith(" 1.0"), info
