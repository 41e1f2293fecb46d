"""The serving-only install: a fresh virtual environment with the serving lock
(infra/locks/serve-cpu.txt, the `serve,cpu` set the image installs) and the project without
dependencies starts the service from an existing model package and scores a payment; LightGBM,
scikit-learn and onnxmltools are not there to import.

The environment is built once per test session from the repository as a wheel (not editable), and
the service runs from a folder outside the repository, so nothing of the working tree leaks in.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scoring_service.core.security import hash_key
from tests.conftest import ROOT, free_port
from tests.fixtures import processes

# Building the environment resolves and installs the serving set (minutes on a cold pip cache).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

API_KEY = "serving-install-key"


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the serving dependency set only."""
    venv = tmp_path_factory.mktemp("serve_venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # A copy of the sources without build outputs: pip builds the wheel from it.
    source = tmp_path_factory.mktemp("serve_src") / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "data", "packages", "__pycache__", ".*_cache", "*.egg-info", "build"
        ),
    )
    # As the image does: the hashed lock, then the project alone.
    lock = ROOT / "infra" / "locks" / "serve-cpu.txt"
    for args in (["--require-hashes", "-r", str(lock)], ["--no-deps", str(source)]):
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *args],
            capture_output=True,
            text=True,
            timeout=1200,
            env={**os.environ, "PIP_NO_INPUT": "1"},
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return python


def test_the_lock_holds_every_dependency(serving_venv: Path) -> None:
    """--no-deps skipped pip's resolver: what the lock installed must satisfy every requirement."""
    result = subprocess.run(
        [str(serving_venv), "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module", ["lightgbm", "sklearn", "onnxmltools", "matplotlib"])
def test_training_libraries_are_absent(serving_venv: Path, module: str) -> None:
    result = subprocess.run(
        [str(serving_venv), "-c", f"import {module}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_service_scores_from_an_existing_package(
    serving_venv: Path, sqlite_repo: Path, model_root: Path, valid_body: dict, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SCORING_FEATURE_REPO": str(sqlite_repo),
        "SCORING_MODEL_ROOT": str(model_root),
        "SCORING_API_KEY_HASHES": hash_key(API_KEY),
        "SCORING_ADMIN_KEY_HASHES": hash_key("serving-install-admin"),
        "SCORING_HOST": "127.0.0.1",
        "SCORING_PORT": str(port),
        "SCORING_DEADLINE_MS": "5000",
    }
    env.pop("PYTHONPATH", None)
    log = (tmp_path / "service.log").open("w")
    # Run outside the repository: imports come from the installed wheel only.
    process = processes.start(
        [str(serving_venv), "-m", "scoring_service", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready in 120 s"
            time.sleep(0.2)
        answer = httpx.post(
            f"{url}/v1/transactions/score",
            json=valid_body,
            headers={"X-API-Key": API_KEY},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] in ("not_fraud", "suspicious", "highly_suspicious")
        assert answer.json()["model_version"] == "fraud_model/v1"
    finally:
        processes.stop(process, signal.SIGTERM, timeout=30)
        log.close()
